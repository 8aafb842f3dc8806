"""OpenAI's completions API, spoken by the official `openai` client to `tinygpt serve`."""

from __future__ import annotations

import httpx
import openai
import pytest


@pytest.fixture(scope="module")
def client(service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service}/v1", api_key="not-needed", max_retries=0)


def generate(service: str, **fields) -> dict:
    answer = httpx.post(f"{service}/generate", json={"top_k": None, **fields}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_models_lists_the_served_model(client):
    assert [model.id for model in client.models.list()] == ["tinygpt"]


def test_completion_matches_generate_with_the_same_seed(client, service):
    answer = client.completions.create(model="tinygpt", prompt="ROMEO:", max_tokens=12,
                                       temperature=0.9, top_p=0.95, seed=3)
    same = generate(service, prompt="ROMEO:", max_new_tokens=12, temperature=0.9, top_p=0.95,
                    seed=3)
    assert answer.object == "text_completion" and answer.model == "tinygpt"
    assert answer.choices[0].text == same["text"]
    assert answer.usage.completion_tokens == same["completion_tokens"]
    assert answer.usage.prompt_tokens == same["prompt_tokens"]
    assert answer.usage.total_tokens == same["prompt_tokens"] + same["completion_tokens"]
    expected = "length" if same["completion_tokens"] == 12 else "stop"
    assert answer.choices[0].finish_reason == expected


def test_streamed_chunks_add_up_to_the_whole_completion(client):
    fields = dict(model="tinygpt", prompt=["JULIET:"], max_tokens=16, temperature=0.8, seed=5)
    whole = client.completions.create(**fields)
    chunks = list(client.completions.create(**fields, stream=True))
    assert len(chunks) > 2
    assert "".join(chunk.choices[0].text for chunk in chunks) == whole.choices[0].text
    assert [chunk.choices[0].finish_reason for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_stop_string_ends_the_completion_before_it(client):
    free = client.completions.create(model="tinygpt", prompt="ROMEO:", max_tokens=24,
                                     temperature=0, seed=1).choices[0].text
    stop = free.strip()[:2]
    stopped = client.completions.create(model="tinygpt", prompt="ROMEO:", max_tokens=24,
                                        temperature=0, stop=stop)
    assert stopped.choices[0].text == free[:free.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_degenerate_temperature_and_top_p_are_greedy_not_500s(client):
    greedy = client.completions.create(model="tinygpt", prompt="ROMEO:", max_tokens=12,
                                       temperature=0).choices[0].text
    for degenerate in ({"temperature": 1e-300}, {"top_p": 1e-300}):
        fields = dict(model="tinygpt", prompt="ROMEO:", max_tokens=12, seed=3, **degenerate)
        assert client.completions.create(**fields).choices[0].text == greedy, degenerate
        chunks = list(client.completions.create(**fields, stream=True))
        assert "".join(chunk.choices[0].text for chunk in chunks) == greedy, degenerate


@pytest.mark.parametrize(("fields", "param"), [
    ({"temperature": 9.0}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 2}, "n"),
    ({"logprobs": 3}, "logprobs"),
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"prompt": "x" * 9000}, "prompt"),
])
def test_what_the_service_cannot_honour_is_a_400_naming_the_parameter(client, fields, param):
    request = {"model": "tinygpt", "prompt": "hi", **fields}
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(**request)
    assert raised.value.body["param"] == param
    assert raised.value.body["type"] == "invalid_request_error"


def test_an_unknown_model_is_a_404_naming_the_served_ones(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.completions.create(model="gpt-4", prompt="hi")
    assert "tinygpt" in raised.value.body["message"]


def test_malformed_bodies_get_openai_errors_not_500s(service):
    for body in (b"{not json", b"[]", b'{"prompt": "no model"}', b'{"model": 3}'):
        answer = httpx.post(f"{service}/v1/completions", content=body, timeout=10,
                            headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["message"]


CHAT = [{"role": "system", "content": "You write plays."}, {"role": "user", "content": "ROMEO:"}]
CHAT_PROMPT = "system: You write plays.\nuser: ROMEO:\nassistant:"  # README's template


def test_a_chat_completion_is_the_templated_prompt_completed(client, service):
    answer = client.chat.completions.create(model="tinygpt", messages=CHAT, max_tokens=12,
                                            temperature=0.9, top_p=0.95, seed=3)
    same = generate(service, prompt=CHAT_PROMPT, max_new_tokens=12, temperature=0.9,
                    top_p=0.95, seed=3)
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == same["text"]
    assert answer.usage.prompt_tokens == same["prompt_tokens"]
    expected = "length" if same["completion_tokens"] == 12 else "stop"
    assert answer.choices[0].finish_reason == expected
    newer = client.chat.completions.create(model="tinygpt", messages=CHAT, seed=3,
                                           max_completion_tokens=12, temperature=0.9,
                                           top_p=0.95)
    assert newer.choices[0].message.content == same["text"]


def test_streamed_chat_deltas_add_up_to_the_whole_answer(client):
    fields = dict(model="tinygpt", messages=CHAT, max_tokens=16, temperature=0.8, seed=5)
    whole = client.chat.completions.create(**fields)
    chunks = list(client.chat.completions.create(**fields, stream=True))
    assert len(chunks) > 2 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == (
        whole.choices[0].message.content)
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.parametrize(("fields", "param"), [
    ({"max_tokens": 0}, "max_tokens"), ({"temperature": 9.0}, "temperature"),
    ({"n": 2}, "n"), ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
])
def test_a_chat_request_gets_the_same_bounds_as_a_completion(client, fields, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(**{"model": "tinygpt", "messages": CHAT, **fields})
    assert raised.value.body["param"] == param


def test_any_other_v1_path_is_an_openai_404_naming_what_is_served(client, service):
    with pytest.raises(openai.NotFoundError) as raised:
        client.embeddings.create(model="tinygpt", input="hi")
    assert "/v1/chat/completions" in raised.value.body["message"]
    answer = httpx.get(f"{service}/v1/assistants", timeout=10)
    assert answer.status_code == 404 and answer.json()["error"]["type"] == "not_found_error"
