"""harness.eval.split: deterministic, saved, eligibility rule, disjoint, reload gives the same split."""

import pytest

from harness.eval.split import SplitConfig, SplitError, ShopSplit, buyers_per_shop, make_or_load_split, shop_score, split_shops


def counts(n_shops: int = 60) -> dict[str, int]:
    # Shops 0..n-1 with 10, 20, ... buyers: the first four are below the default minimum of 50.
    return {f"shop{i}": 10 * (i + 1) for i in range(n_shops)}


def test_eligibility_fraction_and_disjoint():
    split = split_shops(counts(), SplitConfig(held_out_fraction=0.25, min_buyers=50, seed=3))
    assert set(split.eligible) == {f"shop{i}" for i in range(4, 60)}
    assert len(split.held_out) == 14  # ceil(0.25 * 56)
    assert set(split.held_out) <= set(split.eligible)
    assert not set(split.held_out) & set(split.training)
    assert set(split.held_out) | set(split.training) == set(counts())
    # Small shops always train.
    assert {"shop0", "shop1", "shop2", "shop3"} <= set(split.training)


def test_held_out_are_the_lowest_hashes():
    config = SplitConfig(held_out_fraction=0.1, seed=7)
    split = split_shops(counts(), config)
    cutoff = max(shop_score(shop, 7) for shop in split.held_out)
    assert all(shop_score(shop, 7) > cutoff for shop in split.eligible if shop not in split.held_out)


def test_deterministic_and_independent_of_order_and_seed_sensitive():
    forward = split_shops(counts(), SplitConfig(seed=1))
    backward = split_shops(dict(reversed(list(counts().items()))), SplitConfig(seed=1))
    assert forward.held_out == backward.held_out and forward.training == backward.training
    other_seed = split_shops(counts(), SplitConfig(seed=2))
    assert other_seed.held_out != forward.held_out


def test_cap_and_at_least_one():
    assert len(split_shops(counts(), SplitConfig(max_held_out=3)).held_out) == 3
    tiny = split_shops({"a": 60, "b": 5}, SplitConfig(held_out_fraction=0.01))
    assert tiny.held_out == ["a"] and tiny.training == ["b"]
    none_eligible = split_shops({"a": 6, "b": 5}, SplitConfig())
    assert none_eligible.held_out == [] and none_eligible.training == ["a", "b"]


def test_folds_hold_out_every_eligible_shop_exactly_once_and_never_share_one():
    splits = [split_shops(counts(), SplitConfig(seed=4, folds=5, fold=k, max_held_out=None)) for k in range(5)]
    held = [shop for split in splits for shop in split.held_out]
    assert sorted(held) == sorted(splits[0].eligible)  # each eligible shop once: merchant-disjoint folds
    assert sorted(len(split.held_out) for split in splits) == [11, 11, 11, 11, 12]  # 56 shops dealt round-robin
    for split in splits:
        assert not set(split.held_out) & set(split.training)
        assert set(split.held_out) | set(split.training) == set(counts())  # every other shop trains
    with pytest.raises(ValueError, match="0 <= fold < folds"):
        SplitConfig(folds=5, fold=5)


def test_saved_and_reloaded(tmp_path):
    path = tmp_path / "shop_split.json"
    config = SplitConfig(held_out_fraction=0.3, seed=5)
    first = make_or_load_split(path, counts(), config)
    assert path.is_file()
    again = make_or_load_split(path, counts(), config)
    loaded = ShopSplit.load(path)
    assert again.held_out == first.held_out == loaded.held_out
    assert loaded.training == first.training and loaded.config == config


def test_saved_split_that_disagrees_is_an_error(tmp_path):
    path = tmp_path / "shop_split.json"
    make_or_load_split(path, counts(), SplitConfig(seed=5))
    with pytest.raises(SplitError, match="saved with"):
        make_or_load_split(path, counts(), SplitConfig(seed=6))
    with pytest.raises(SplitError, match="buyer counts differ"):
        make_or_load_split(path, {**counts(), "new": 99}, SplitConfig(seed=5))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SplitError, match="bad.json"):
        ShopSplit.load(tmp_path / "bad.json")


def test_bad_settings():
    with pytest.raises(ValueError, match="held_out_fraction"):
        SplitConfig(held_out_fraction=1.0)
    with pytest.raises(SplitError, match="no shops"):
        split_shops({})


def test_buyer_counts_from_events(tmp_path):
    import pandas as pd

    events = pd.DataFrame({"shop_id": ["s1", "s1", "s1", "s2"], "buyer_id": ["a", "a", "b", "a"]})
    events.to_parquet(tmp_path / "events.parquet")
    assert buyers_per_shop(tmp_path / "events.parquet") == {"s1": 2, "s2": 1}
