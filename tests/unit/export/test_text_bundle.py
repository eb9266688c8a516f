"""Edge bundles of text models: the runner's plain-Python WordPiece equals ``tokenizers``."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_builders import write_model
from onnx import TensorProto, helper, numpy_helper

from forwardpass.errors import Unsupported
from forwardpass.export import ExportOptions, export_bundle
from forwardpass.export.runner import BundleError, TextStep, WordPiece, wordpiece_problems

tokenizers = pytest.importorskip("tokenizers")

WORDS = [
    "the", "a", "man", "is", "play", "##ing", "guitar", "on", "street", "cafe", "caf", "##e",
    "de", "##ja", "vu", "na", "##ive", "re", "##sum", "##es", "price", "東", "京", "日", "本",
    "un", "##believ", "##able", "test", "example", "com", "e", "mail", "σ", "ς", "ο", "δ",
    "Σ", "Café", "The", "A",
]  # fmt: skip
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TRICKY = [
    "A man is playing a guitar on the street.",
    "Café déjà vu: naïve résumés — ½ price!",
    "東京は日本の首都です。",
    "ΟΔΟΣ σοφός",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeeds\x85next",
    "zero\u200bwidth and soft\u00adhyphen and nul\x00and \ufffd replacement",
    "[CLS] already [SEP][MASK]special",
    "unbelievable!!! ?¿ ¡hola! «quotes» “curly” don't",
    "e-mail test@example.com, +1 (555) 010-9999; 3.14 ≈ π… $5 ^_^ `x` ~y~ |z|",
    "x" * 120 + " long word",
    "İstanbul ǅemal ﬁne ß",
    "   leading and trailing   ",
    "\u3000ideographic space\u2003em space\u00a0nbsp",
]


def build_tokenizer(lowercase: bool, strip_accents: bool | None, template: bool) -> Any:
    """A small BERT WordPiece tokenizer made with the tokenizers library itself."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece as WordPieceModel

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for char in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-@():;$^_`~|+":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault("##" + char, len(vocab))
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordPieceModel(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    if template:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )  # fmt: skip
    else:
        tok.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
    tok.add_special_tokens(SPECIALS)
    return tok


CASES = [(True, None, True), (False, None, False), (True, False, False), (False, True, True)]


@pytest.mark.parametrize(("lowercase", "strip", "template"), CASES)
def test_wordpiece_equals_the_tokenizers_library(
    lowercase: bool, strip: bool | None, template: bool
) -> None:
    library = build_tokenizer(lowercase, strip, template)
    document = json.loads(library.to_str())
    assert wordpiece_problems(document) == []
    ours = WordPiece(document)
    for max_length in (None, 8):
        if max_length is None:
            library.no_truncation()
        else:
            library.enable_truncation(max_length)
        for text in TRICKY:
            expected = library.encode(text)
            assert ours.encode(text, max_length) == (expected.ids, expected.type_ids), text


#: Characters whose class is the same in Unicode 3.2 and this Python's tables: the library's
#: tables are older than this Python's, and characters assigned or re-classed since (U+2E43,
#: U+13430…) are classed apart. No lone surrogates: UTF-8 text cannot hold them.
STABLE = st.characters(exclude_categories=("Cs",)).filter(
    lambda c: unicodedata.ucd_3_2_0.category(c) == unicodedata.category(c)
)


@settings(max_examples=300, deadline=None)
@given(st.text(STABLE, max_size=40))
def test_wordpiece_equals_the_library_on_any_text(text: str) -> None:
    library = _LIBRARY
    expected = library.encode(text)
    assert _OURS.encode(text, None) == (expected.ids, expected.type_ids)


_LIBRARY = build_tokenizer(True, None, True)
_OURS = WordPiece(json.loads(_LIBRARY.to_str()))


def test_other_tokenizers_are_named_and_refused() -> None:
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import BPE

    bpe = Tokenizer(BPE({"a": 0, "b": 1}, [], unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    problems = wordpiece_problems(json.loads(bpe.to_str()))
    assert any("model 'BPE'" in p for p in problems)
    assert any("ByteLevel" in p for p in problems)
    with pytest.raises(BundleError, match="not a BERT WordPiece tokenizer"):
        WordPiece(json.loads(bpe.to_str()))


def test_text_step_pads_like_the_server_and_checks_texts(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(build_tokenizer(True, None, True).to_str())
    inputs = {
        n: {"name": n, "datatype": "INT64", "dims": [-1]}
        for n in ("input_ids", "attention_mask", "token_type_ids")
    }
    step = TextStep({"name": "text", "kind": "text", "max_length": 20}, inputs, tmp_path)
    out = step(["a man", "the man is playing guitar on the street"])
    assert out["input_ids"].shape == (2, 16)  # the longest (11) rounded up to 16
    assert out["attention_mask"][0].tolist() == [1] * 4 + [0] * 12
    with pytest.raises(BundleError, match="not UTF-8"):
        step([b"\xff\xfe"])
    with pytest.raises(BundleError, match="empty"):
        step(["   "])
    strict = TextStep(
        {"name": "text", "kind": "text", "max_length": 4, "truncation": False}, inputs, tmp_path
    )
    with pytest.raises(BundleError, match="over max_length 4"):
        strict(["the man is playing"])


def embedding_model() -> onnx.ModelProto:
    """Mean of token embeddings over the attention mask (token types add a bias)."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(512, 8)).astype(np.float32)
    types = rng.normal(size=(2, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
        helper.make_node("Gather", ["types", "token_type_ids"], ["type_rows"]),
        helper.make_node("Add", ["tokens", "type_rows"], ["summed"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["summed", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Div", ["total", "count"], ["embedding"]),
    ]
    ints = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["n", "t"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    graph = helper.make_graph(
        nodes,
        "embed",
        ints,
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 8])],
        initializer=[
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(types, "types"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def text_config(processing: dict[str, Any]) -> str:
    text = json.dumps(json.dumps(processing))
    tensors = "".join(
        f'input [ {{ name: "{n}" data_type: TYPE_INT64 dims: [ -1 ] }} ]\n'
        for n in ("input_ids", "attention_mask", "token_type_ids")
    )
    return f"""
name: "embed"
max_batch_size: 8
{tensors}output [ {{ name: "embedding" data_type: TYPE_FP32 dims: [ 8 ] }} ]
parameters {{ key: "processing" value: {{ string_value: {text} }} }}
"""


def test_a_text_model_bundle_answers_like_the_engine(tmp_path: Path) -> None:
    root = tmp_path / "models"
    processing = {
        "inputs": [{"name": "text", "kind": "text", "max_length": 12}],
        "outputs": [{"name": "unit", "from": "embedding", "steps": ["l2_normalize"]}],
    }
    write_model(
        root,
        "embed",
        config=text_config(processing),
        model=embedding_model(),
        files={"tokenizer.json": build_tokenizer(True, None, True).to_str()},
    )
    out = tmp_path / "bundle"
    # The export compares its answers with the engine's on generated texts before it writes.
    result = export_bundle(ExportOptions("embed", root, output=out, repeat=1))
    assert (out / "tokenizer.json").is_file()
    assert {s["source"] for s in result.manifest.verification["samples"]} == {"generated"}
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"text": [["Café déjà vu"], ["the man"]]}))
    answer = subprocess.run(
        [sys.executable, "-I", str(out / "runner.py"), str(request)],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    (line,) = [json.loads(x) for x in answer.stdout.splitlines()]
    unit = np.asarray(line["outputs"]["unit"])
    assert unit.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)


def test_a_text_model_with_another_tokenizer_is_refused_unless_raw(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    root = tmp_path / "models"
    write_model(
        root,
        "embed",
        config=text_config({"inputs": [{"name": "text", "kind": "text"}]}),
        model=embedding_model(),
        files={"tokenizer.json": Tokenizer(BPE({"a": 0}, [], unk_token=None)).to_str()},
    )
    out = tmp_path / "bundle"
    with pytest.raises(Unsupported, match=r"input 'text': tokenizer model 'BPE'.*--raw"):
        export_bundle(ExportOptions("embed", root, output=out))
    assert not out.exists()
