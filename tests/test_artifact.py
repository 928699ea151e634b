"""The codebook artifact reader (codebook/artifact.py): what it reads, what identifies an artifact,
and errors that name the file and the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from codebook.artifact import (
    ArtifactError,
    CodebookArtifact,
    ShopMixError,
    TypesError,
)

from test_policies import HIGH, LOW, MIDDLE, write_codebook


def write_trained_layout(directory: Path, k: int = 4, weights: bytes = b"weights-1") -> Path:
    """The files codebook/train.py writes that define the codes, with stand-in weight bytes
    (the reader hashes the bytes; it never loads the model)."""
    write_codebook(directory)
    (directory / "config.json").write_text(json.dumps({"train": {}, "model": {"codebook_size": k}}))
    (directory / "features.json").write_text(json.dumps({"names": ["n_events"]}))
    (directory / "model.safetensors").write_bytes(weights)
    return directory


def test_reads_k_mixes_rates_and_buyer_counts(tmp_path):
    codebook = CodebookArtifact.load(write_codebook(tmp_path / "cb"))
    assert codebook.k == 4 and codebook.path == (tmp_path / "cb").resolve()
    assert codebook.shops == ["high", "low", "mixed"]
    assert codebook.shop_mix("mixed") == pytest.approx({HIGH: 0.4, LOW: 0.4, MIDDLE: 0.2})
    assert codebook.shop_mix("high") == {HIGH: 1.0}  # codes at probability 0 are left out
    assert codebook.shop_buyers("mixed") == 100 and codebook.shop_buyers("nope") == 0
    assert codebook.real_conversion_rates() == {HIGH: 0.95, LOW: 0.02, MIDDLE: 0.3}  # code 3 is unused


def test_the_hash_follows_the_defining_files_not_the_path(tmp_path):
    first = CodebookArtifact.load(write_trained_layout(tmp_path / "a"))
    copy = CodebookArtifact.load(shutil.copytree(tmp_path / "a", tmp_path / "elsewhere"))
    assert copy.content_hash == first.content_hash and copy.path != first.path
    # Re-rounded mixes leave the codes' meaning alone; other weights change it.
    (tmp_path / "elsewhere" / "shop_mix.json").write_text(json.dumps({"shops": {"mixed": [0.5, 0.5, 0, 0]}}))
    assert CodebookArtifact.load(tmp_path / "elsewhere").content_hash == first.content_hash
    retrained = CodebookArtifact.load(write_trained_layout(tmp_path / "b", weights=b"weights-2"))
    assert retrained.content_hash != first.content_hash
    # A hand-written artifact without a model is identified by its mixes and types.
    handwritten = CodebookArtifact.load(write_codebook(tmp_path / "c"))
    assert len(handwritten.content_hash) == 64 and handwritten.content_hash != first.content_hash


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda d: (d / "shop_mix.json").write_text("{not json"), ShopMixError, r"shop_mix\.json: not valid JSON"),
        (lambda d: (d / "types.json").write_text("[1, 2]"), TypesError, r"types\.json: code None: expected an object"),
        (lambda d: (d / "types.json").write_text(json.dumps({"types": {"x": {}}})), TypesError,
         r"types\.json: code 'x': the code must be an integer"),
        (lambda d: (d / "config.json").write_text(json.dumps({"model": {"codebook_size": 5}})), ArtifactError,
         r"disagree on the codebook size K: config\.json says 5, shop_mix\.json says 4, types\.json says 4"),
        (lambda d: (d / "config.json").write_text(json.dumps({"train": {}})), ArtifactError,
         r"config\.json: expected \{'model': \{'codebook_size': K"),
    ],
    ids=["mix-json", "types-entry", "types-code", "k-disagrees", "config-shape"],
)
def test_load_errors_name_the_file_and_the_problem(tmp_path, damage, error, message):
    directory = write_codebook(tmp_path / "cb")
    damage(directory)
    with pytest.raises(error, match=message):
        CodebookArtifact.load(directory)


def test_shop_errors_name_the_file_and_the_shops(tmp_path):
    directory = write_codebook(tmp_path / "cb")
    codebook = CodebookArtifact.load(directory)
    with pytest.raises(ShopMixError, match=r"cb/shop_mix\.json: no shop 'nope'; shops in this codebook: high, low, mixed"):
        codebook.shop_mix("nope")
    (directory / "shop_mix.json").write_text(json.dumps({"shops": {"bad": {"probs": ["x"]}, "far": {"9": 1.0}}}))
    codebook = CodebookArtifact.load(directory)
    with pytest.raises(ShopMixError, match=r"shop_mix\.json: shop 'bad': probabilities must be numbers"):
        codebook.shop_mix("bad")
    with pytest.raises(ShopMixError, match=r"shop_mix\.json: shop 'far' gives probability to codes \[9\] outside 0\.\.3"):
        codebook.shop_mix("far")
    (directory / "shop_mix.json").unlink()
    with pytest.raises(ShopMixError, match=r"cb/shop_mix\.json: not found"):
        CodebookArtifact.load(directory).shop_mix("mixed")


def test_not_an_artifact_is_named(tmp_path):
    with pytest.raises(ArtifactError, match=r"missing: not a codebook artifact directory \(it does not exist\)"):
        CodebookArtifact.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"empty: not a codebook artifact \(none of config\.json, shop_mix\.json"):
        CodebookArtifact.load(tmp_path / "empty")
