"""Settings of the curation stage: sources, the steps in order, and each step's thresholds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from scratchlm.errors import SettingsError
from scratchlm.settings import setting

# The curation steps: per-document ones in any order, then the corpus-wide ones (data/curate.py).
DOCUMENT_STEPS = (
    "normalize", "gutenberg", "length", "gopher", "repetition", "c4", "fineweb",
    "badwords", "language", "quality", "pii",
)  # fmt: skip
CORPUS_STEPS = ("exact_dedup", "line_dedup", "near_dedup", "decontaminate")
LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]*")  # the Hub's license ids: cc-by-4.0, apache-2.0 ...


@dataclass
class CurateSettings:
    sources: list[str] = setting(
        ["builtin:pydoc"],
        "files, folders or globs (.txt .md .jsonl[.gz|.zst] .parquet .html .warc[.gz] .wet[.gz]), "
        "hf:<saved dataset dir or hub name>, or builtin:shakespeare / builtin:pydoc",
    )
    text_field: str = setting("text", "the JSONL / Parquet / HF datasets field with the text")
    max_docs: int = setting(0, "read at most this many documents (0 = all)", min=0)
    steps: list[str] = setting(
        ["normalize", "length", "exact_dedup"],
        "the steps, in order: " + ", ".join(DOCUMENT_STEPS + CORPUS_STEPS),
    )
    output_format: Literal["jsonl.zst", "jsonl", "parquet"] = setting(
        "jsonl.zst", "format of the output shards"
    )
    shard_docs: int = setting(10_000, "documents per output shard", min=1)
    workers: int = setting(0, "processes for the per-document steps (0 = all cores)", min=0)
    executor: Literal["local", "ray"] = setting(
        "local", "local: a process pool; ray: tasks on a Ray cluster (same output)"
    )
    max_doc_chars: int = setting(
        10_000_000, "documents longer than this are dropped as huge (0 = no limit)", min=0
    )
    # normalize / length
    fix_mojibake: bool = setting(True, "normalize: repair mis-decoded text with ftfy")
    min_words: int = setting(20, "length: drop documents with fewer words", min=0)
    max_words: int = setting(0, "length: drop documents with more words (0 = no limit)", min=0)
    # Gopher quality (Rae et al. 2021, table A1): the published thresholds
    gopher_min_words: int = setting(50, "gopher: fewest non-symbol words", min=0)
    gopher_max_words: int = setting(100_000, "gopher: most non-symbol words", min=0)
    min_mean_word_length: float = setting(3.0, "gopher: shortest mean word length", min=0.0)
    max_mean_word_length: float = setting(10.0, "gopher: longest mean word length", min=0.0)
    max_symbol_word_ratio: float = setting(
        0.1, "gopher: most '#' (and, separately, '...') per word", min=0.0
    )
    max_bullet_lines_ratio: float = setting(
        0.9, "gopher: most lines starting with a bullet", min=0.0
    )
    max_ellipsis_lines_ratio: float = setting(0.3, "gopher: most lines ending in '...'", min=0.0)
    min_alpha_words_ratio: float = setting(
        0.8, "gopher: fewest words with a letter", min=0.0, max=1.0
    )
    min_stop_words: int = setting(2, "gopher: fewest of the/be/to/of/and/that/have/with", min=0)
    # Gopher repetition (table A1)
    max_dup_line_frac: float = setting(0.3, "repetition: most duplicate lines", min=0.0)
    max_dup_para_frac: float = setting(0.3, "repetition: most duplicate paragraphs", min=0.0)
    max_dup_line_char_frac: float = setting(0.2, "repetition: most chars in dup lines", min=0.0)
    max_dup_para_char_frac: float = setting(
        0.2, "repetition: most chars in dup paragraphs", min=0.0
    )
    max_top_ngram_frac: list[float] = setting(
        [0.2, 0.18, 0.16], "repetition: most chars in the top 2-, 3-, 4-gram"
    )
    max_dup_ngram_frac: list[float] = setting(
        [0.15, 0.14, 0.13, 0.12, 0.11, 0.10], "repetition: most chars in repeated 5- to 10-grams"
    )
    # C4 (Raffel et al. 2020)
    c4_min_sentences: int = setting(5, "c4: fewest sentences left after the line rules", min=0)
    c4_min_words_per_line: int = setting(3, "c4: lines with fewer words are removed", min=0)
    c4_max_word_length: int = setting(1000, "c4: lines with a longer word are removed", min=1)
    c4_rules: list[str] = setting(
        ["citations", "terminal_punct", "lorem_ipsum", "javascript", "curly_bracket", "policy"],
        "c4: the rules applied (line rules remove lines; lorem_ipsum, curly_bracket drop documents)",
    )
    # FineWeb (Penedo et al. 2024)
    fineweb_min_punct_lines: float = setting(
        0.12, "fineweb: fewest lines ending in punctuation", min=0.0
    )
    fineweb_max_short_lines: float = setting(0.67, "fineweb: most lines of <= 30 chars", min=0.0)
    fineweb_max_dup_line_chars: float = setting(0.01, "fineweb: most chars in dup lines", min=0.0)
    fineweb_max_newline_ratio: float = setting(0.3, "fineweb: most newlines per word", min=0.0)
    # bad words, language, quality, PII
    badwords_dir: str = setting(
        "", "badwords: a folder of <language>.txt word lists ('' = the small lists shipped)"
    )
    badwords_language: str = setting("en", "badwords: whose list to use (a language code)")
    languages: list[str] = setting(["en"], "language: keep documents in these (fastText codes)")
    language_threshold: float = setting(
        0.65, "language: lowest fastText score kept", min=0.0, max=1.0
    )
    quality_model: str = setting(
        "", "quality: a fastText model from `scratchlm curate train-quality`"
    )
    quality_threshold: float = setting(
        0.5, "quality: lowest probability of the high-quality label kept", min=0.0, max=1.0
    )
    quality_top_fraction: float = setting(
        0.0,
        "quality: keep this top fraction by score instead (0 = use the threshold)",
        min=0.0,
        max=1.0,
    )
    pii: list[str] = setting(["email", "phone", "ip"], "pii: what to mask")
    # dedup
    line_dedup_min_chars: int = setting(
        1, "line_dedup: lines shorter than this are never removed", min=1
    )
    minhash_ngram: int = setting(5, "near_dedup: words per shingle", min=1)
    minhash_permutations: int = setting(128, "near_dedup: MinHash permutations", min=1)
    minhash_bands: int = setting(16, "near_dedup: LSH bands (must divide the permutations)", min=1)
    near_dedup_threshold: float = setting(
        0.8, "near_dedup: estimated Jaccard similarity that makes a duplicate", min=0.0, max=1.0
    )
    seed: int = setting(1337, "near_dedup: seed of the hash permutations")
    # decontamination (GPT-3, Brown et al. 2020, appendix C)
    decontaminate_against: list[str] = setting(
        [],
        "decontaminate: benchmark files (.jsonl[.gz|.zst] .csv .parquet .txt, FORMAT:PATH, "
        "hf:FOLDER), besides the eval section's task files and held-out text",
    )
    decontaminate_ngram: int = setting(
        13, "decontaminate: words a document must share with an item in a row (GPT-3: 13)", min=3
    )
    decontaminate_mode: Literal["drop", "remove_spans"] = setting(
        "drop", "decontaminate: drop a contaminated document, or cut the shared text out"
    )
    decontaminate_window: int = setting(
        200,
        "decontaminate: remove_spans cuts this many characters around a match, and drops "
        "pieces shorter than this",
        min=0,
    )
    decontaminate_max_pieces: int = setting(
        10, "decontaminate: remove_spans drops a document cut into more pieces", min=1
    )
    # the dataset card (<work>/curated/README.md)
    license: str = setting(
        "unknown", "card: the data's license, as a Hub id (cc-by-4.0, mit, other, unknown ...)"
    )

    def __post_init__(self) -> None:
        known = DOCUMENT_STEPS + CORPUS_STEPS
        for step in self.steps:
            if step not in known:
                raise SettingsError(
                    f"invalid setting curate.steps: unknown step {step!r}; steps are {', '.join(known)}"
                )
        if len(set(self.steps)) != len(self.steps):
            raise SettingsError("invalid setting curate.steps: a step is listed twice")
        corpus = [i for i, s in enumerate(self.steps) if s in CORPUS_STEPS]
        document = [i for i, s in enumerate(self.steps) if s in DOCUMENT_STEPS]
        if corpus and document and min(corpus) < max(document):
            raise SettingsError(
                f"invalid setting curate.steps: the corpus-wide steps ({', '.join(CORPUS_STEPS)}) "
                "read every document, so they come after the per-document steps"
            )
        if "quality" in self.steps and not self.quality_model:
            raise SettingsError(
                "curate.steps has quality but curate.quality_model is not set: train one with "
                "`scratchlm curate train-quality`"
            )
        if self.minhash_permutations % self.minhash_bands:
            raise SettingsError(
                f"invalid setting curate.minhash_bands={self.minhash_bands}: it must divide "
                f"curate.minhash_permutations={self.minhash_permutations}"
            )
        rules = {
            "citations",
            "terminal_punct",
            "lorem_ipsum",
            "javascript",
            "curly_bracket",
            "policy",
        }
        if set(self.c4_rules) - rules:
            raise SettingsError(
                f"invalid setting curate.c4_rules: unknown {sorted(set(self.c4_rules) - rules)}; "
                f"rules are {', '.join(sorted(rules))}"
            )
        if not LICENSE.fullmatch(self.license):
            raise SettingsError(
                f"invalid setting curate.license={self.license!r}: expected a Hub license id "
                "such as cc-by-4.0, mit, apache-2.0, other or unknown (lowercase)"
            )
        unknown = set(self.pii) - {"email", "phone", "ip"}
        if unknown:
            raise SettingsError(
                f"invalid setting curate.pii: unknown {sorted(unknown)}; choose email, phone, ip"
            )
