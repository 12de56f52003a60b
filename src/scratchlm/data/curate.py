"""The curation stage: sources -> per-document steps -> corpus-wide dedup -> shards + report.

    1. read       stream documents from every source (bad records counted, huge ones dropped)
    2. per doc    the recipe's document steps (steps.py), on chunks of documents in a process
                  pool or on Ray; chunks come back in input order
    3. corpus     a quality top-fraction cut, then exact / line / near dedup and benchmark
                  decontamination, in recipe order
    4. write      docs_NNNNN.jsonl.zst (or .jsonl, .parquet) of {"id", "text", "meta"}
                  report.json, report.md and funnel.png: what each step kept, and why the rest went
                  README.md: a Hugging Face dataset card (card.py)

Documents stream from one pass to the next; the two passes that must see every document
before deciding (near dedup, a quality top-fraction) park them in a staging file in the output
folder. Memory holds a few chunks of documents plus the dedup indexes (16 bytes per document for
exact dedup, one MinHash signature per document for near dedup), never the corpus.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scratchlm.data.card import SourceMix, write_card
from scratchlm.data.decontaminate import Decontamination
from scratchlm.data.dedup import MinHasher, dedup_lines, exact_key, near_duplicate_clusters
from scratchlm.data.ray_executor import ray_map
from scratchlm.data.report import count_words, length_bin, write_reports
from scratchlm.data.settings import CORPUS_STEPS, CurateSettings
from scratchlm.data.sources import BadInput, Document, iter_documents, open_binary
from scratchlm.data.steps import ChunkResult, DocumentSteps
from scratchlm.errors import StageError
from scratchlm.io import atomic_open

CHUNK_DOCS = 64
IN_PROCESS_ITEMS = 4  # chunks run in this process before a pool is started
SHARD_SUFFIX = {"jsonl": ".jsonl", "jsonl.zst": ".jsonl.zst", "parquet": ".parquet"}


# --------------------------------------------------------------------------- executors


_WORKER: DocumentSteps | None = None


def _init_worker(settings: CurateSettings) -> None:
    global _WORKER
    _WORKER = DocumentSteps(settings)


def _run_chunk(chunk: list[Document]) -> ChunkResult:
    return _WORKER(chunk)


def _signatures(args: tuple[CurateSettings, list[str]]) -> list[Any]:
    s, texts = args
    hasher = MinHasher(s.minhash_permutations, s.minhash_ngram, s.seed)
    return [hasher.signature(t) for t in texts]


def map_in_order(
    s: CurateSettings, fn: Callable[[Any], Any], items: Iterable[Any], stateful: bool
) -> Iterator[Any]:
    """fn over items, results in input order: in this process, in a process pool, or on Ray.
    `stateful` work runs in workers that each built a DocumentSteps first. The first few items
    run here while we learn whether the input is big enough to be worth starting workers."""
    n = s.workers or os.cpu_count() or 1
    items = iter(items)
    if stateful:
        _init_worker(s)
    head = list(itertools.islice(items, IN_PROCESS_ITEMS if n > 1 else None))
    yield from map(fn, head)
    rest = list(itertools.islice(items, 1))
    if not rest:
        return
    items = itertools.chain(rest, items)
    init, initargs = (_init_worker, (s,)) if stateful else (None, ())
    if s.executor == "ray":
        yield from ray_map(fn, items, n, init, initargs)
        return
    ctx = mp.get_context("spawn")  # fork would copy the parent's threads and locks
    with ctx.Pool(n, initializer=init, initargs=initargs) as pool:
        yield from pool.imap(fn, items, chunksize=1)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------- staging files


def _write_staging(docs: Iterable[Document], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(doc.to_json() + "\n")


def _read_staging(path: Path) -> Iterator[Document]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            yield Document(d["id"], d["text"], d["meta"])


# --------------------------------------------------------------------------- the stage


class Curation:
    """One run of the stage: its settings, output folder and the account for the report."""

    def __init__(
        self, s: CurateSettings, out_dir: Path, progress: bool, benchmarks: list[str] = ()
    ):
        self.s, self.out, self.progress = s, out_dir, progress
        self.sources = SourceMix(s.sources)
        self.decontamination = None  # built before any work: a bad benchmark file stops here
        if "decontaminate" in s.steps:
            self.decontamination = Decontamination.of_files(benchmarks, s.decontaminate_ngram)
        self.account = ChunkResult()
        self.account.funnel = {step: [0, 0, 0, 0] for step in s.steps}  # in recipe order
        self.bad = BadInput()
        self.stats: Counter[str] = Counter()
        # words per document, counted into power-of-two bins as documents pass (not kept)
        self.lengths: dict[str, Counter[str]] = {"in": Counter(), "out": Counter()}
        self.clusters: Counter[int] = Counter()

    def read(self) -> Iterator[Document]:
        s = self.s
        for i, doc in enumerate(iter_documents(s.sources, s.text_field, self.bad)):
            if s.max_docs and i >= s.max_docs:
                return
            self.stats["documents_in"] += 1
            self.stats["chars_in"] += len(doc.text)
            self.lengths["in"][length_bin(count_words(doc.text))] += 1
            if s.max_doc_chars and len(doc.text) > s.max_doc_chars:
                self.account.drop("huge_document", Document(doc.id, doc.text[:200], doc.meta))
                continue
            yield doc

    def per_document(self) -> Iterator[Document]:
        bar = tqdm(desc="curate", unit="doc", disable=not self.progress, mininterval=0.5)
        chunks = _chunks(self.sources.read(self.read()), CHUNK_DOCS)
        with bar:
            for result in map_in_order(self.s, _run_chunk, chunks, stateful=True):
                bar.update(result.seen)
                self.account.merge(result)
                yield from result.kept

    def corpus_steps(self, docs: Iterator[Document], staging: Path) -> Iterator[Document]:
        s = self.s
        if "quality" in s.steps and s.quality_top_fraction:
            docs = self._quality_cut(docs, staging.with_suffix(".quality"))
        passes = {
            "exact_dedup": self._exact,
            "line_dedup": self._lines,
            "near_dedup": self._near,
            "decontaminate": self._decontaminate,
        }
        for step in (st for st in s.steps if st in CORPUS_STEPS):
            docs = self._counted(step, passes[step](docs, staging.with_suffix(f".{step}")))
        return docs

    def _counted(self, step: str, docs: Iterator[Document]) -> Iterator[Document]:
        funnel = self.account.funnel.setdefault(step, [0, 0, 0, 0])
        for doc in docs:
            funnel[1] += 1
            funnel[3] += len(doc.text)
            yield doc

    def _entering(self, step: str, doc: Document) -> None:
        funnel = self.account.funnel.setdefault(step, [0, 0, 0, 0])
        funnel[0] += 1
        funnel[2] += len(doc.text)

    def _exact(self, docs: Iterator[Document], _: Path) -> Iterator[Document]:
        seen: set[bytes] = set()
        for doc in docs:
            self._entering("exact_dedup", doc)
            key = exact_key(doc.text)
            if key in seen:
                self.account.drop("exact_duplicate", doc)
                continue
            seen.add(key)
            yield doc

    def _lines(self, docs: Iterator[Document], _: Path) -> Iterator[Document]:
        seen: set[bytes] = set()
        for doc in docs:
            self._entering("line_dedup", doc)
            text, removed = dedup_lines(doc.text, seen, self.s.line_dedup_min_chars)
            self.account.counts["duplicate_lines_removed"] += removed
            if not text:
                self.account.drop("all_lines_duplicated", doc)
                continue
            yield Document(doc.id, text, doc.meta)

    def _near(self, docs: Iterator[Document], staging: Path) -> Iterator[Document]:
        s = self.s
        _write_staging(docs, staging)
        ids: list[str] = []

        def texts() -> Iterator[str]:
            for d in _read_staging(staging):
                ids.append(d.id)
                yield d.text

        jobs = ((s, chunk) for chunk in _chunks(texts(), CHUNK_DOCS * 4))
        sigs = [sig for part in map_in_order(s, _signatures, jobs, stateful=False) for sig in part]
        roots, sizes = (
            near_duplicate_clusters(sigs, s.minhash_bands, s.near_dedup_threshold)
            if sigs
            else ([], {})
        )
        self.clusters.update(sizes.values())
        for i, doc in enumerate(_read_staging(staging)):
            self._entering("near_dedup", doc)
            if roots[i] != i:
                self.account.drop("near_duplicate", doc, duplicate_of=ids[roots[i]])
                continue
            yield doc
        staging.unlink()

    def _decontaminate(self, docs: Iterator[Document], _: Path) -> Iterator[Document]:
        found = self.decontamination
        for chunk in _chunks(docs, CHUNK_DOCS):
            for doc, matches in zip(chunk, found.index.scan([d.text for d in chunk]), strict=True):
                self._entering("decontaminate", doc)
                kept, reason, shared = found.settle(doc, matches, self.s)
                if kept is None:
                    self.account.drop(reason, doc, **shared)
                else:
                    yield kept

    def _quality_cut(self, docs: Iterator[Document], staging: Path) -> Iterator[Document]:
        """Keep the top `quality_top_fraction` of documents by quality score (ties: input order)."""
        _write_staging(docs, staging)
        scores = sorted((d.meta["quality"] for d in _read_staging(staging)), reverse=True)
        keep = max(1, round(len(scores) * self.s.quality_top_fraction)) if scores else 0
        cutoff = scores[keep - 1] if keep else float("inf")
        kept = 0
        for doc in _read_staging(staging):
            if doc.meta["quality"] >= cutoff and kept < keep:
                kept += 1
                yield doc
            else:
                self.account.drop("quality_not_in_top_fraction", doc)
        staging.unlink()

    def write(self, docs: Iterable[Document]) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        suffix = SHARD_SUFFIX[self.s.output_format]
        for batch in _chunks(docs, self.s.shard_docs):
            name = f"docs_{len(shards):05d}{suffix}"
            write_shard(self.out / name, batch, self.s.output_format)
            self.sources.kept(batch)
            chars = sum(len(d.text) for d in batch)
            size = (self.out / name).stat().st_size
            shards.append({"file": name, "documents": len(batch), "chars": chars, "bytes": size})
            self.stats["documents_out"] += len(batch)
            self.stats["chars_out"] += chars
            self.stats["bytes_out"] += sum(
                len(d.text.encode("utf-8", "surrogatepass")) for d in batch
            )
            self.lengths["out"].update(length_bin(count_words(d.text)) for d in batch)
        return shards


def write_shard(path: Path, docs: list[Document], fmt: str) -> None:
    """One output shard, written atomically."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "id": [d.id for d in docs],
                "text": [d.text for d in docs],
                "meta": [json.dumps(d.meta, ensure_ascii=False) for d in docs],
            }
        )
        with atomic_open(path, "wb") as f:
            pq.write_table(table, f)
        return
    data = ("\n".join(d.to_json() for d in docs) + "\n").encode("utf-8")
    if fmt == "jsonl.zst":
        import zstandard

        data = zstandard.ZstdCompressor(level=3).compress(data)
    with atomic_open(path, "wb") as f:
        f.write(data)


def curate(
    settings: CurateSettings,
    out_dir: Path,
    progress: bool = True,
    benchmarks: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run curation into `out_dir` (which must be empty or new); return the report.

    `benchmarks`: evaluation files the decontaminate step checks besides
    curate.decontaminate_against (the pipeline passes the eval section's task files)."""
    start = time.time()
    against = list(dict.fromkeys([*settings.decontaminate_against, *benchmarks]))
    run = Curation(settings, out_dir, progress, against)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / ".staging"
    try:
        shards = run.write(run.corpus_steps(run.per_document(), staging))
    finally:
        for leftover in out_dir.glob(".staging*"):
            leftover.unlink()
    if run.stats["documents_out"] == 0:
        reasons = (
            ", ".join(f"{r}: {n}" for r, n in (run.account.drops + run.bad.counts).most_common())
            or "no input documents"
        )
        raise StageError(
            f"curate: no document survived out of {run.stats['documents_in']} ({reasons}); "
            "check curate.sources and the curate.steps thresholds"
        )
    report = write_reports(run, shards, settings, out_dir, round(time.time() - start, 2))
    write_card(out_dir)
    return report


# --------------------------------------------------------------------------- reading back


def shard_files(curated_dir: Path) -> list[Path]:
    return sorted(
        p for p in curated_dir.glob("docs_*") if p.name.endswith(tuple(SHARD_SUFFIX.values()))
    )


def iter_curated(curated_dir: Path) -> Iterator[dict[str, Any]]:
    """Stream the documents of a curated folder, in order, whatever the shard format."""
    shards = shard_files(curated_dir)
    if not shards:
        raise StageError(f"{curated_dir} holds no docs_* shards: run `scratchlm curate` first")
    for shard in shards:
        try:
            yield from _shard_documents(shard)
        except Exception as e:  # a damaged shard of ours: say which, never skip it quietly
            raise StageError(
                f"{shard} is damaged ({type(e).__name__}: {e}): run `scratchlm curate` again"
            ) from None


def _shard_documents(shard: Path) -> Iterator[dict[str, Any]]:
    if shard.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(shard).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield {"id": row["id"], "text": row["text"], "meta": json.loads(row["meta"])}
        return
    with open_binary(shard) as f:
        for line in f:
            yield json.loads(line)


def iter_curated_texts(curated_dir: Path) -> Iterator[str]:
    for doc in iter_curated(curated_dir):
        yield doc["text"]
