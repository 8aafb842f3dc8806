"""The MLflow pyfunc for tinygpt, logged as "models from code": no pickled object.

Its one artifact, `checkpoint`, is a checkpoint folder (safetensors weights, config.json,
tokenizer files). `predict` takes a frame with a `prompt` column and sampling params; a
fine-tuned model is logged with model_config {"mode": "completion"}, so it answers prompts
instead of continuing them, and with sft.fallback a `fallback` artifact (JSON), whose closest
training answer replaces a degenerate one. Our own service unwraps it (`unwrap_python_model()`)
to reach the model and tokenizer and stream.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd

from gpt.checkpoint import load_model
from gpt.config import SamplingParams
from gpt.generate import generate_text
from gpt.sft import Fallback, complete
from gpt.tokenizer import load_tokenizer
from registry import CHECKPOINT_ARTIFACT, FALLBACK_ARTIFACT, sampling_from


class TinyGPTModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        folder = context.artifacts[CHECKPOINT_ARTIFACT]
        self.model = load_model(folder).eval()
        self.tokenizer = load_tokenizer(folder)
        config = context.model_config or {}
        self.mode = config.get("mode", "text")
        self.sampling = config.get("sampling", {})  # what its run's sample section chose
        fallback = context.artifacts.get(FALLBACK_ARTIFACT)
        self.fallback = Fallback.load(fallback) if fallback else None

    def predict(self, context, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        settings = sampling_from(params)
        prompts = model_input["prompt"].astype(str).tolist()
        if self.mode == "completion":
            answers = [self.answer(p, settings) for p in prompts]
        else:
            answers = [generate_text(self.model, self.tokenizer, p, settings) for p in prompts]
        return pd.DataFrame({"completion": answers})

    def answer(self, prompt: str, settings: SamplingParams) -> str:
        answer = complete(self.model, self.tokenizer, prompt, params=settings)
        return self.fallback.answer(prompt, answer)[0] if self.fallback else answer


mlflow.models.set_model(TinyGPTModel())
