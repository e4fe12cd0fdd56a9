"""Config of the ``phrasebank`` decoder (no torch or faiss import here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cellnet_core.config import ComponentConfig

PostStep = Literal["whitespace", "capitalize", "repeats"]


class PhrasebankConfig(ComponentConfig):
    """Embedding → the nearest known phrase(s) of a FAISS-indexed bank (inner product on
    L2-normalised vectors, i.e. cosine)."""

    name: Literal["phrasebank"] = "phrasebank"

    # -- index -----------------------------------------------------------------------------
    index: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto", description="FAISS index: 'flat' (exact), 'ivf' (IVF-Flat), 'hnsw' (HNSW-Flat) or 'auto' "
                            "(flat below exact_below phrases, the 'approximate' index above)")
    approximate: Literal["ivf", "hnsw"] = Field(
        "hnsw", description="approximate index that 'auto' uses at and above exact_below phrases")
    exact_below: int = Field(50_000, ge=1, description="'auto' uses the exact flat index below this many phrases")
    nlist: int = Field(0, ge=0, le=1_000_000,
                       description="IVF cells; 0: about 4·sqrt(n), at most n/39 (FAISS's training rule)")
    nprobe: int = Field(16, ge=1, le=65536, description="IVF cells visited per query (starting value, see target_recall)")
    hnsw_m: int = Field(32, ge=4, le=128, description="HNSW links per node (M)")
    ef_construction: int = Field(40, ge=8, le=4096, description="HNSW candidate list size while building")
    ef_search: int = Field(64, ge=1, le=65536, description="HNSW candidate list size per query (starting value, see target_recall)")
    target_recall: float = Field(
        0.95, ge=0.0, le=1.0,
        description="approximate indexes: after building, nprobe/ef_search are doubled (at most 6 times) until the "
                    "measured recall@1 against exact search reaches this; 0 disables tuning")
    recall_sample: int = Field(500, ge=1, le=100_000,
                               description="query vectors used to measure recall@1 of an approximate index")
    recall_noise: float = Field(
        0.5, ge=0.0, le=10.0,
        description="recall queries are sampled bank vectors plus Gaussian noise of this total norm, renormalised "
                    "(0.5 ≈ cosine 0.89 to the source phrase)")

    # -- decoding --------------------------------------------------------------------------
    method: Literal["best", "mmr", "compose"] = Field(
        "best", description="'best': the nearest phrase; 'mmr': diversity-aware rerank of the top-k, decode joins up "
                            "to max_phrases MMR picks; 'compose': beam search over phrase sequences scored by "
                            "re-embedding the joined text with the teacher")
    k: int = Field(5, ge=1, le=1000, description="candidates reported per query by default")
    min_score: float | None = Field(
        None, ge=-1.0, le=1.0,
        description="similarity threshold: a query whose best cosine is below it gets the explicit 'no confident "
                    "match' result (decode → '', candidates flagged confident=False); null: off")
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0,
                              description="MMR trade-off: 1 = relevance only, 0 = diversity only")
    mmr_margin: float = Field(0.1, ge=0.0, le=2.0,
                              description="'mmr' decode joins further MMR picks only if their cosine is within this "
                                          "of the best phrase's")
    mmr_pool: int = Field(20, ge=1, le=1000, description="top phrases MMR reranks")
    max_phrases: int = Field(3, ge=1, le=16, description="'mmr'/'compose': at most this many phrases in one answer")
    compose_search: Literal["greedy", "beam"] = Field(
        "greedy", description="'compose': greedy (beam of 1) or beam search of width beam_width")
    beam_width: int = Field(3, ge=1, le=64, description="'compose' beam search: sequences kept per step")
    compose_pool: int = Field(10, ge=1, le=200, description="'compose': top phrases that may be combined")
    compose_length_penalty: float = Field(
        0.01, ge=0.0, le=1.0,
        description="'compose': a sequence's score is its cosine minus this much per phrase beyond the first, so a "
                    "longer answer must earn its extra phrases")
    compose_score: Literal["encoder", "sum"] = Field(
        "encoder", description="'compose' scorer: 'encoder' re-embeds each composed text with the teacher "
                               "(ctx.encoder); 'sum': normalised sum of the phrases' bank vectors (no teacher)")

    # -- text, cache, batching ---------------------------------------------------------------
    postprocess: list[PostStep] = Field(
        default_factory=lambda: ["whitespace", "repeats"],
        description="output clean-up steps in order: 'whitespace' (collapse runs, trim), 'capitalize' (first letter "
                    "of each sentence), 'repeats' (drop an immediately repeated word)")
    cache_size: int = Field(1024, ge=0, le=10_000_000, description="LRU cache of recent queries (0: off)")
    cache_decimals: int = Field(4, ge=0, le=8, description="embeddings are rounded to this many decimals for the cache key")
    parallel_min_batch: int = Field(
        8, ge=1, le=1_000_000,
        description="searches of fewer queries than this run on one OpenMP thread (lower single-query latency, "
                    "no thread wake-ups); larger batches use FAISS's default thread count")
    threads: int = Field(
        0, ge=0, le=1024,
        description="OpenMP threads FAISS uses to build the index and search batches (0: FAISS's default, one per "
                    "core); 1 is faster on a machine whose cores are busy with other work")
    batch_size: int = Field(1024, ge=1, le=1_000_000, description="queries searched per FAISS call in batch decoding")
    texts_file: str | None = Field(
        None, description="file of phrases (one per line, or .jsonl with a 'text' field) encoded with the run's "
                          "encoder at fit time and added to the bank; alone it builds the bank on first use")
    include_questions: bool = Field(
        False, description="keep texts that are only questions (every sentence ends with '?', e.g. 'How are you "
                           "doing?') when fit() builds the bank; by default they are left out, so that the bank "
                           "answers rather than asks back (texts_file phrases and add() are never filtered)")
    seed: int = Field(0, ge=0, description="seed of IVF training and of the recall sample")
