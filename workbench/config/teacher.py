"""A teacher model and how to reach it (``configs/teachers/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from workbench.config.fields import check


@dataclass
class PriceConfig:
    """Price of a teacher's tokens, in US dollars per million tokens."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def __post_init__(self) -> None:
        check(self.input_per_mtok >= 0, "teacher.price.input_per_mtok", self.input_per_mtok,
              "prices are non-negative")
        check(self.output_per_mtok >= 0, "teacher.price.output_per_mtok", self.output_per_mtok,
              "prices are non-negative")


@dataclass
class TeacherConfig:
    """A teacher model and how to reach it."""

    backend: Literal["openai_compat", "vllm_engine", "hf_local"] = "hf_local"
    """``openai_compat`` (any OpenAI-compatible server), ``vllm_engine`` (in-process vLLM,
    GPU), or ``hf_local`` (transformers on CPU/GPU)."""
    model: str = "gemma3-270m"
    """Model name sent to the API, or a local directory / ``.gguf`` file. ``gemma3-270m``
    means the GGUF shipped in the ``models`` extra."""
    revision: str = ""
    """Model revision or checksum; part of the cache key."""
    base_url: str = ""
    """Endpoint for ``openai_compat``, e.g. ``http://127.0.0.1:8080/v1``."""
    api_key_env: str = ""
    """Name of the environment variable that holds the API key (never the key itself)."""
    api: Literal["chat", "completions"] = "chat"
    """``chat``: send chat messages (instruction-tuned models); ``completions``: send the
    rendered plain prompt ending in the template's answer prefix (base models)."""
    send_audio: bool = False
    """``openai_compat`` with ``api: chat`` only: add each clip's audio file to the user
    message as an ``input_audio`` part (base64; wav and mp3 as they are, other formats
    decoded to 16 kHz mono wav), for audio-capable chat models. Off by default; the audio's
    content hash enters the cache key."""
    temperature: float = 0.0
    max_tokens: int = 0
    """Cap on generated tokens; 0 uses each template's own bound."""
    top_logprobs: int = 20
    """How many alternatives per position to request for soft labels."""
    repetition_penalty: float = 1.0
    """>1 discourages repeats (small base models loop without it); 1.0 is off."""
    seed: int = 0
    max_concurrency: int = 8
    requests_per_minute: int = 0
    """0 means no limit."""
    tokens_per_minute: int = 0
    """0 means no limit."""
    timeout_s: float = 60.0
    """Total deadline of one attempt (connect, headers and the whole body); then the attempt
    is retried, and after ``max_retries`` stored as a ``timeout`` row."""
    max_retries: int = 5
    max_response_bytes: int = 8 * 1024 * 1024
    """``openai_compat``: the most bytes one response body may hold once decompressed
    (8 MiB). It is counted while the body is read, so a small compressed body that expands
    to gigabytes is cut at this size: the request becomes a ``bad_response`` row, not
    retried, and counted at its worst-case price (the server may have billed it). A runtime
    knob, not part of the cache key."""
    batch_size: int = 8
    """Prompts per forward pass / generate call for in-process backends (with
    ``batch_tokens``: the most). ``hf_local`` answers consecutive batches together, up to 64
    prompts, so that score-only rows share one vocabulary projection
    (``teachers.scoring.HEAD_ROWS``)."""
    batch_tokens: int = 0
    """In-process backends (``hf_local``): the most padded tokens one batch computes -- its
    prompts x the batch's longest, counting only the suffixes after the job's shared prompt
    prefix where the batch runs over it. Prompts sorted by length fill each batch up to it
    (and up to ``batch_size``), so short prompts go in large batches and long ones in small
    ones, each padded only to its neighbours; the plan's real / padded tokens are logged
    before sending. 0: ``batch_size`` prompts per batch, sorted by length. A runtime knob,
    not part of the cache key."""
    score_only: bool = True
    """Answer a soft-label-only template (greedy) from the answer position's
    log-probabilities: one forward pass in ``hf_local``, ``max_tokens=1`` over an API; a row
    whose first token is not a label gets the full decode. Same soft labels and cache keys
    as ``false`` (the full ``generate`` path); a runtime knob, not part of the key."""
    prefix_cache: bool = True
    """Reuse the prompt prefix every request of a job shares: ``hf_local`` computes its KV
    cache once per job, ``vllm_engine`` turns on vLLM's automatic prefix caching. A runtime
    knob, not part of the key."""
    device: str = "auto"
    dtype: str = "auto"
    num_threads: int = 0
    """CPU threads of an in-process backend (``torch.set_num_threads`` before the model
    loads); 0 keeps torch's default. A runtime knob: not part of the cache key."""
    price: PriceConfig = field(default_factory=PriceConfig)
    budget_usd: float = 0.0
    """Cap on what this teacher may cost the cache, in total over every run and job (stored
    spend plus the worst-case price of requests in flight); the job stops cleanly there,
    and a rerun with a larger cap continues (0: no cap)."""
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    max_model_len: int = 4096
    max_images: int = 8
    """``vllm_engine`` with a local vision-language model: the most frames one prompt may
    carry (vLLM reserves memory for that many)."""

    def __post_init__(self) -> None:
        if self.backend == "openai_compat":
            check(bool(self.base_url), "teacher.base_url", self.base_url,
                  "openai_compat needs the endpoint, e.g. http://127.0.0.1:8080/v1")
        if self.send_audio:
            check(self.backend == "openai_compat" and self.api == "chat", "teacher.send_audio",
                  self.send_audio, "input_audio parts go to audio-capable chat models: use "
                  "backend openai_compat with api chat, or set send_audio false")
        check(not self.api_key_env.startswith(("sk-", "sk_")), "teacher.api_key_env",
              "<redacted>", "name the environment variable that holds the key, not the key")
        check(self.num_threads >= 0, "teacher.num_threads", self.num_threads,
              "use 0 (torch's default) or a positive thread count")
        check(0.0 <= self.temperature <= 2.0, "teacher.temperature", self.temperature,
              "use a value in [0, 2]; 0 for deterministic soft labels")
        check(self.max_tokens >= 0, "teacher.max_tokens", self.max_tokens,
              "use 0 (the template's bound) or a positive cap")
        check(0 <= self.top_logprobs <= 20, "teacher.top_logprobs", self.top_logprobs,
              "OpenAI-compatible servers accept 0..20")
        check(self.repetition_penalty > 0, "teacher.repetition_penalty", self.repetition_penalty,
              "use 1.0 (off) or a value such as 1.2")
        check(self.max_concurrency >= 1, "teacher.max_concurrency", self.max_concurrency,
              "use at least 1")
        check(self.timeout_s > 0, "teacher.timeout_s", self.timeout_s, "use a positive number")
        check(self.max_retries >= 0, "teacher.max_retries", self.max_retries, "use 0 or more")
        check(self.max_response_bytes >= 64 * 1024, "teacher.max_response_bytes",
              self.max_response_bytes, "use at least 65536 (64 KiB); the default is 8388608")
        check(self.max_images >= 1, "teacher.max_images", self.max_images, "use at least 1")
        check(self.batch_size >= 1, "teacher.batch_size", self.batch_size, "use at least 1")
        check(self.batch_tokens >= 0, "teacher.batch_tokens", self.batch_tokens,
              "use 0 (batch_size prompts per batch) or a positive token budget such as 512")
        check(self.budget_usd >= 0, "teacher.budget_usd", self.budget_usd,
              "use 0 for no cap or a positive amount")
