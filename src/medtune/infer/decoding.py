"""How tokens are picked and where generation stops, for chat, generate, eval, serve and the GGUF export alike.

Light on purpose (transformers is imported only to build a GenerationConfig), so the CLI reads these
defaults for its options and help without loading the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from medtune.data.reply import TURN_END

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Decoding:
    """How tokens are picked. The defaults are Qwen3's recommended thinking-mode sampling."""

    greedy: bool = False
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    min_p: float = 0.0
    max_new_tokens: int = 2048

    def generation_config(self, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
        """Every sampling field set: `generate` fills unset (None) fields from the model's own generation_config
        (Qwen3's temperature 0.6, top_k 20), which for greedy decoding would only add warnings."""
        from transformers import GenerationConfig

        stop = dict(
            max_new_tokens=self.max_new_tokens, eos_token_id=turn_end_id(tokenizer), pad_token_id=tokenizer.pad_token_id
        )
        if self.greedy:  # transformers' neutral values, which it does not count as sampling settings
            return GenerationConfig(do_sample=False, temperature=1.0, top_p=1.0, top_k=50, **stop)
        return GenerationConfig(
            do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p, **stop
        )

    def as_dict(self) -> dict:
        if self.greedy:
            return {"greedy": True, "max_new_tokens": self.max_new_tokens}
        return {
            "greedy": False,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "max_new_tokens": self.max_new_tokens,
        }


def turn_end_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id of `<|im_end|>`, where the model ends its turn and generation stops."""
    return tokenizer.convert_tokens_to_ids(TURN_END)
