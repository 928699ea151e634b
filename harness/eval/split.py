"""A deterministic, saved split of shops into training shops and held-out shops.

Held-out evaluation needs shops the codebook and the agent never saw. Which shops those are must not
depend on the order of the log, on the machine, or on when the split was made, and a rerun must use
the very same split: so the split is a function of (shop ids, their buyer counts, seed, fraction,
min_buyers) only, and it is written to shop_split.json and read back from there.

The rule:
* only shops with at least `min_buyers` distinct buyers are eligible for held-out (a smaller shop's
  real conversion rate is too noisy to score a simulation against);
* every eligible shop gets a score: the seeded SHA-256 of its id mapped to [0, 1);
* the ceil(fraction x eligible) eligible shops with the lowest scores are held out (at least one
  when any shop is eligible), optionally capped at `max_held_out`; every other shop trains.
* with `folds` = K > 1 the eligible shops, in score order, are dealt round-robin into K folds and
  fold k holds out exactly its own shops (fraction and cap do not apply): over the K folds every
  eligible shop is held out once, and the folds never share a shop (merchant-disjoint).

Hashing the id (rather than shuffling a list) keeps a shop's score independent of which other
shops are in the log.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

SPLIT_FILE = "shop_split.json"


class SplitError(ValueError):
    """A saved split that does not match the data or the settings asked for."""


@dataclass(frozen=True)
class SplitConfig:
    held_out_fraction: float = 0.2
    min_buyers: int = 50
    max_held_out: int | None = None  # cap on held-out shops (small, fast evaluations)
    seed: int = 0
    folds: int = 1  # K > 1: cross-validation over the eligible shops; this split is fold `fold`
    fold: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must be in (0, 1), got {self.held_out_fraction}")
        if self.min_buyers < 1:
            raise ValueError(f"min_buyers must be at least 1, got {self.min_buyers}")
        if self.max_held_out is not None and self.max_held_out < 1:
            raise ValueError(f"max_held_out must be at least 1 or None, got {self.max_held_out}")
        if self.folds < 1 or not 0 <= self.fold < self.folds:
            raise ValueError(f"need folds >= 1 and 0 <= fold < folds, got folds={self.folds}, fold={self.fold}")


@dataclass
class ShopSplit:
    config: SplitConfig
    training: list[str]
    held_out: list[str]
    eligible: list[str]  # shops with >= min_buyers buyers (held-out candidates)
    buyers: dict[str, int] = field(default_factory=dict)  # distinct buyers per shop

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "rule": "eligible = shops with >= min_buyers buyers; held out = the ceil(fraction x eligible) "
            "eligible shops with the lowest sha256(f'{seed}:{shop}'), capped at max_held_out; with folds = K > 1, "
            "the eligible shops in that order are dealt round-robin into K folds and fold k holds out its own",
            "n_training": len(self.training),
            "n_held_out": len(self.held_out),
            "n_eligible": len(self.eligible),
            "held_out": self.held_out,
            "training": self.training,
            "eligible": self.eligible,
            "buyers": self.buyers,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        partial.replace(path)  # a crash never leaves half a split behind
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ShopSplit":
        path = Path(path)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            config = SplitConfig(**record["config"])
            return cls(config, list(record["training"]), list(record["held_out"]), list(record["eligible"]),
                       {str(k): int(v) for k, v in record.get("buyers", {}).items()})
        except FileNotFoundError:
            raise SplitError(f"{path}: no such split file") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise SplitError(f"{path}: not a shop split written by harness.eval.split ({type(error).__name__}: {error})") from None


def shop_score(shop: str, seed: int) -> float:
    """The shop's seeded hash as a number in [0, 1): same shop and seed, same score, anywhere."""
    digest = hashlib.sha256(f"{seed}:{shop}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_shops(buyers_per_shop: Mapping[str, int], config: SplitConfig = SplitConfig()) -> ShopSplit:
    """Split the shops of `buyers_per_shop` (shop id -> distinct buyers) by the rule above."""
    if not buyers_per_shop:
        raise SplitError("no shops to split (the buyer counts are empty)")
    buyers = {str(shop): int(n) for shop, n in buyers_per_shop.items()}
    eligible = sorted((shop for shop, n in buyers.items() if n >= config.min_buyers), key=lambda s: shop_score(s, config.seed))
    if config.folds > 1:
        held_out = eligible[config.fold :: config.folds]
    else:
        n_held_out = math.ceil(config.held_out_fraction * len(eligible)) if eligible else 0
        if config.max_held_out is not None:
            n_held_out = min(n_held_out, config.max_held_out)
        held_out = eligible[:n_held_out]
    held = set(held_out)
    training = sorted(shop for shop in buyers if shop not in held)
    return ShopSplit(config, training, held_out, sorted(eligible), dict(sorted(buyers.items())))


def buyers_per_shop(events_path: str | Path) -> dict[str, int]:
    """Distinct buyers per shop of an events.parquet, with one DuckDB pass."""
    import duckdb

    events_path = Path(events_path)
    if not events_path.is_file():
        raise FileNotFoundError(f"{events_path}: no events file")
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT CAST(shop_id AS VARCHAR), count(DISTINCT buyer_id) FROM read_parquet(?) GROUP BY 1",
            [str(events_path)],
        ).fetchall()
    return {shop: int(n) for shop, n in rows}


def make_or_load_split(path: str | Path, counts: Mapping[str, int], config: SplitConfig) -> ShopSplit:
    """The split saved at `path` when there is one (checked against the data and settings), else a
    new one, saved there. A saved split that disagrees is an error, never silently replaced."""
    path = Path(path)
    fresh = split_shops(counts, config)
    if not path.is_file():
        fresh.save(path)
        return fresh
    saved = ShopSplit.load(path)
    if saved.config != config:
        raise SplitError(f"{path}: saved with {asdict(saved.config)}, but this run asks for {asdict(config)}; "
                         "use another output directory or delete the file")
    if saved.buyers != fresh.buyers:
        changed = sorted(set(saved.buyers.items()) ^ set(fresh.buyers.items()))[:5]
        raise SplitError(f"{path}: saved for other data (buyer counts differ, e.g. {changed}); "
                         "use another output directory or delete the file")
    return saved
