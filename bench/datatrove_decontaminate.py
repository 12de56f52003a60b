"""datatrove's n-gram decontamination on bench/curate.py's corpus, in datatrove's own venv.

Not a scratchlm module: bench/curate.py runs it with the Python of a venv where
`pip install datatrove==0.10.1 spacy xxhash==3.5.0 regex` was done (datatrove
leaves the last three to extras; xxhash 4 no longer hashes str, which it passes), and reads the JSON it prints.

    python bench/datatrove_decontaminate.py INPUT.json OUTPUT.json

INPUT holds {"n": 13, "items": [[query, gold], ...], "docs": [text, ...]}. The index is built with
NGramsDecontIndexer.compute_hashes (datatrove's own code for query, overlap and gold n-grams;
the indexer's `run` would fetch lighteval tasks, which we replace by our items), written as the
`.index.hashes` file NGramsDecontFilter reads. OUTPUT gets the seconds the filter took over
every document (spaCy loaded beforehand) and the indices of the documents it flagged.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer
from datatrove.utils.hashing import create_hash_func
from datatrove.utils.word_tokenizers import load_word_tokenizer


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    # every n-gram of the item, as ours and GPT-3 check: query ones included
    config = NGramsDecontConfig(n_grams=data["n"], find_query_ngrams=True)
    indexer = SimpleNamespace(
        config=config,
        tokenizer=load_word_tokenizer("en"),
        hash_func=create_hash_func(config.hash_config),
    )
    start = time.perf_counter()
    hashes = set()
    for query, gold in data["items"]:
        hashes.update(NGramsDecontIndexer.compute_hashes(indexer, gold, query))
    index_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        np.array(sorted(hashes), dtype=config.hash_config.np_dtype).tofile(
            f"{folder}/bench.index.hashes"
        )
        decont = NGramsDecontFilter(folder, config=config)
        decont.filter(Document(text="warm up spaCy and load the index", id="0"))
        start = time.perf_counter()
        flagged = {}
        for i, text in enumerate(data["docs"]):
            doc = Document(text=text, id=str(i))
            if decont.filter(doc) is not True:
                flagged[i] = doc.metadata["contaminated_ngram"]
        seconds = time.perf_counter() - start
    Path(sys.argv[2]).write_text(
        json.dumps(
            {
                "seconds": seconds,
                "index_seconds": index_seconds,
                "ngrams": len(hashes),
                "flagged": flagged,
            }
        )
    )


if __name__ == "__main__":
    main()
