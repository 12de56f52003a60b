"""Fine-tuning sets built from text already on the machine, so the demo needs no download.

    builtin:shakespeare-dialogue   chat: a speech, and the next character's reply to it (SFT)
    builtin:shakespeare-genre      a speech, labelled comedy / history / tragedy (classify)
    builtin:shakespeare-preference a speech; its reply preferred to the reply's words shuffled (DPO)
    builtin:pydoc-qa               "What is <topic> in Python?" and the reference's first lines
    builtin:arithmetic-tools       "What is 123+456?" answered with the calculator (system
                                   "tools: calculator") or without it ("tools: none")

The plays' text marks each speech with its speaker on a line of its own ("HAMLET."), so a
scene is a sequence of (speaker, speech) pairs; consecutive speeches by two characters make
a question and an answer. Genres are the First Folio's (Pericles and the poems are left out).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pydoc_data.topics import topics
from typing import Any

from scratchlm.data.arithmetic import problems
from scratchlm.data.sources import shakespeare_files
from scratchlm.errors import StageError
from scratchlm.eval.answers import TOOLS_OFF, TOOLS_ON

FOLIO_GENRE = {
    "comedy": "alls_well as_you_like_it comedy_of_errors loves_labours_lost measure_for_measure "
    "merchant_of_venice merry_wives midsummer much_ado taming tempest twelfth_night "
    "two_gentlemen winters_tale",
    "history": "henry_iv_part_1 henry_iv_part_2 henry_v henry_vi_part_1 henry_vi_part_2 "
    "henry_vi_part_3 henry_viii john richard_ii richard_iii",
    "tragedy": "antony coriolanus cymbeline hamlet julius_caesar lear macbeth othello romeo "
    "timon titus troilus",
}
SPEAKER = re.compile(r"^([A-Z][A-Z' \-]*[A-Z])\.$")
STAGE_DIRECTION = re.compile(r"\[[^\]]*\]")
PER_PLAY = {"dialogue": 150, "genre": 60}


def _genre(filename: str) -> str | None:
    stem = filename.removesuffix("_gut.txt").removeprefix("tragedy_of_")
    for genre, plays in FOLIO_GENRE.items():
        if any(stem.startswith(p) for p in plays.split()):
            return genre
    return None


def _scenes(text: str) -> Iterator[list[tuple[str, str]]]:
    """Each scene as a list of (speaker, speech) with stage directions removed."""
    scene: list[tuple[str, str]] = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().splitlines()
        if not lines:
            continue
        if lines[0].startswith(("ACT ", "SCENE ", "Scene ")):
            if scene:
                yield scene
            scene = []
            continue
        m = SPEAKER.match(lines[0].strip())
        if m:
            speech = " ".join(STAGE_DIRECTION.sub(" ", " ".join(lines[1:])).split())
            if speech:
                scene.append((m.group(1), speech))
    if scene:
        yield scene


def _plays() -> Iterator[tuple[str, str, str]]:
    """(file name, title, text) of each play."""
    for path in shakespeare_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        yield path.name, _capitalise(text.strip().splitlines()[0]), text


def _capitalise(name: str) -> str:
    """'ALL'S WELL' -> 'All's Well' (str.title would write 'All'S')."""
    return " ".join(w.capitalize() for w in name.split())


def _every(items: list[Any], most: int) -> list[Any]:
    """At most `most` items, spread evenly through the list (deterministic)."""
    if len(items) <= most:
        return items
    return [items[i * len(items) // most] for i in range(most)]


def shakespeare_dialogue() -> Iterator[dict[str, Any]]:
    for name, title, text in _plays():
        if _genre(name) is None:
            continue
        pairs = []
        for scene in _scenes(text):
            for (who, said), (replier, reply) in zip(scene, scene[1:], strict=False):
                if (
                    who != replier
                    and 4 <= len(said.split()) <= 40
                    and 4 <= len(reply.split()) <= 40
                ):
                    pairs.append((title, who, said, replier, reply))
        for title, _who, said, replier, reply in _every(pairs, PER_PLAY["dialogue"]):
            yield {
                "messages": [
                    {"role": "system", "content": f"You are {_capitalise(replier)} in {title}."},
                    {"role": "user", "content": said},
                    {"role": "assistant", "content": reply},
                ]
            }


def shakespeare_genre() -> Iterator[dict[str, Any]]:
    for name, _title, text in _plays():
        genre = _genre(name)
        if genre is None:
            continue
        speeches = [s for scene in _scenes(text) for _, s in scene if 15 <= len(s.split()) <= 80]
        for speech in _every(speeches, PER_PLAY["genre"]):
            yield {"text": speech, "label": genre}


def shakespeare_preference() -> Iterator[dict[str, Any]]:
    """The reply as written, preferred to the same words in a shuffled order: a preference for
    well-formed speech that a small model can learn (a reply from another scene is too hard)."""
    for i, pair in enumerate(shakespeare_dialogue()):
        reply = pair["messages"][2]["content"]
        words = reply.split()
        random.Random(i).shuffle(words)
        if words == reply.split():
            continue
        yield {"prompt": pair["messages"][:2], "chosen": reply, "rejected": " ".join(words)}


def pydoc_qa() -> Iterator[dict[str, Any]]:
    for name in sorted(topics):
        paragraphs = [p for p in topics[name].split("\n\n") if len(p.split()) >= 8]
        if not paragraphs:
            continue
        answer = " ".join(paragraphs[0].split()[:60])
        yield {"instruction": f"What is {name} in Python?", "output": answer}


def arithmetic_tools() -> Iterator[dict[str, Any]]:
    """Worked answers for 1-3 digit +, -, * problems of the training split, half of them with a
    calculator call: <|tool|>123+456<|/tool|><|result|>579<|/result|>579."""
    for digits, count in ((1, 200), (2, 1400), (3, 2400)):
        for i, p in enumerate(problems(count, digits, "+-*", "train", seed=7)):
            if i % 2:
                system, reply = TOOLS_OFF, str(p.answer)
            else:
                call = f"<|tool|>{p.expression}<|/tool|><|result|>{p.answer}<|/result|>"
                system, reply = TOOLS_ON, f"{call}{p.answer}"
            yield {
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": p.question},
                    {"role": "assistant", "content": reply},
                ]
            }


BUILTINS = {
    "builtin:shakespeare-dialogue": shakespeare_dialogue,
    "builtin:shakespeare-genre": shakespeare_genre,
    "builtin:shakespeare-preference": shakespeare_preference,
    "builtin:pydoc-qa": pydoc_qa,
    "builtin:arithmetic-tools": arithmetic_tools,
}


def builtin_records(spec: str) -> Iterator[dict[str, Any]]:
    if spec not in BUILTINS:
        raise StageError(f"unknown data set {spec}; built-in sets are {', '.join(BUILTINS)}")
    return BUILTINS[spec]()
