"""`LMSpec`: the recipe's lm: section, how a decoder language model is exported and measured.

Pure schema; the plan checks it against the model (its position limit, its data windows), the decoder exporters
(edgepress.deploy.decoder) and the runner's LM measurement take its values.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LMSpec(BaseModel):
    """A decoder LM's KV cache, prompt and evaluation."""

    model_config = ConfigDict(extra="forbid")

    cache_len: int = Field(128, ge=2, le=65536, description="Tokens the KV cache holds (at most the model's "
                           "position limit); every exported file keeps a cache this long.")
    prompt_len: int = Field(16, ge=1, description="Prompt tokens: the TFLite prefill signature's length, and the "
                            "prompt time to first token is measured on.")
    eval_windows: int = Field(32, ge=1, description="Held-out windows each file is scored on (perplexity), "
                              "teacher-forced through its prefill and decode.")

    @classmethod
    def for_positions(cls, max_len: int) -> LMSpec:
        """The lm: section of a decoder whose recipe has none: the defaults, the cache no longer than the model's
        position limit `max_len`."""
        return cls(cache_len=min(cls.model_fields["cache_len"].default, max_len))

    @model_validator(mode="after")
    def _prompt_fits(self) -> LMSpec:
        if self.prompt_len > self.cache_len:
            raise ValueError(f"lm.prompt_len {self.prompt_len} is longer than the KV cache (lm.cache_len "
                             f"{self.cache_len}): a prompt must fit in the cache")
        return self
