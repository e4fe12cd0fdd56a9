"""Subword tokenizer trained with the ``tokenizers`` library on the decoder's training texts."""

from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"


def train_tokenizer(texts: Sequence[str], kind: str = "bpe", vocab_size: int = 2000,
                    lowercase: bool = False) -> Tokenizer:
    """Train a byte-level BPE (every byte is in the alphabet, so nothing is ever unknown) or a
    unigram model (characters it never saw map to ``<unk>``). Ids 0/1/2 are pad/bos/eos."""
    norm = [normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else [])
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[PAD, BOS, EOS],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS, UNK],
                                          unk_token=UNK, show_progress=False)
    else:  # pragma: no cover - the config's Literal forbids it
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    tok.normalizer = normalizers.Sequence(norm)
    tok.train_from_iterator(list(texts), trainer=trainer)
    for i, t in enumerate((PAD, BOS, EOS)):
        assert tok.token_to_id(t) == i, f"special token {t} is not id {i}"
    return tok


def decode_ids(tok: Tokenizer, ids: Sequence[int]) -> str:
    """Ids → text; never raises (invalid byte sequences become U+FFFD, out-of-range ids are dropped)."""
    n = tok.get_vocab_size()
    ids = [int(i) for i in ids if 0 <= int(i) < n]
    return tok.decode(ids, skip_special_tokens=True).strip()
