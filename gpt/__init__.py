"""tinygpt's model library: tokenizer, GPT, data, trainer, sampler, checkpoints.

Pure PyTorch + NumPy/PyArrow: nothing here imports Prefect, MLflow, DVC or Great Expectations.
"""
