"""The core's decoder contract, for each assembly method of the phrase bank (fake teacher:
the core's hashing encoder)."""

from cellnet_core.testing.contracts import DecoderContract


class TestPhrasebankBest(DecoderContract):
    name = "phrasebank"
    config = {"method": "best"}


class TestPhrasebankMMR(DecoderContract):
    name = "phrasebank"
    config = {"method": "mmr", "mmr_lambda": 0.5}


class TestPhrasebankCompose(DecoderContract):
    name = "phrasebank"
    config = {"method": "compose", "compose_search": "beam", "beam_width": 2, "max_phrases": 2}


class TestPhrasebankHNSW(DecoderContract):
    name = "phrasebank"
    config = {"index": "hnsw", "recall_sample": 8}
