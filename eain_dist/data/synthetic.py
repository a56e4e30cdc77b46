"""Synthetic Amazon reviews in the 2023 release's format, for `eain generate`.

Writes `<out>/reviews/part-NNNNN.jsonl.gz` and `<out>/meta/part-NNNNN.jsonl.gz` with the
fields of the real files, at any size: users are generated a chunk at a time with vectorised
numpy, so memory grows with users and items, never with reviews. Same arguments and seed give
identical bytes (with the same numpy and zlib).

The generative process, chosen so that a sequence model has something to find that a model of
user and item alone cannot fully capture:

Items. Each item belongs to one of `categories` leaf categories (Zipf-sized, grouped under a
few main categories) and to one of its category's stores; prices are log-normal per category,
10% unknown. Popularity is Zipf (weight 1 / rank, ranks shuffled over the ids). Every item
has `_NEXT_ITEMS` "next" items: items of its own category drawn by popularity, what people
tend to review after it.

Users. Reviews per user are 1 plus a multinomial share of the rest with log-normal weights:
heavy-tailed, many users with 1-4 reviews, a few with hundreds (expected at most
`_MAX_EXPECTED_REVIEWS`); the total is exactly `reviews`. A user's review days start
uniformly in 2015-2023 and follow log-normal gaps around a personal pace; each day is moved to a weekday of the same week drawn from a weekly profile
(weekends busier), at an hour drawn from a daily profile (evening peak, night trough), to the
millisecond.

Sequences. A user starts in a home category (by category popularity). Each later review
  - follows the previous item to one of its next items with probability `_FOLLOW_SOON` when
    it comes within `_SOON_DAYS` days of the previous review, `_FOLLOW_LATER` otherwise
    (sequential dependence, stronger for short gaps);
  - otherwise drifts to a neighbouring category (categories form a ring) with probability
    `_DRIFT`, and draws an item of the current category by popularity (interest drift).
Ratings are an item's quality plus noise; helpful votes and verified purchase are noise.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from eain_dist.config import S3Config
from eain_dist.data.errors import InputError
from eain_dist.data.fs import filesystem_for, url_of

_NEXT_ITEMS = 3
_FOLLOW_SOON = 0.7
_FOLLOW_LATER = 0.35
_SOON_DAYS = 3
_DRIFT = 0.15
_ZIPF = 1.0
_ACTIVITY_SIGMA = 1.4  # spread of the log-normal reviews-per-user weights
_MAX_EXPECTED_REVIEWS = 1000  # per user, so no single user dominates a small dataset
_FIRST_DAY = 16436  # 2015-01-01, days since the epoch
_LAST_DAY = 19630  # 2023-09-30, where the 2023 release ends
_CHUNK_REVIEWS = 200_000  # reviews generated at once (whole users, so about)
_CHUNK_ITEMS = 100_000
_GZIP_LEVEL = 1  # generation speed over file size
# UTC hour and weekday (Monday first) profiles: evenings and weekends are busier.
_HOUR_WEIGHTS = 1.0 + 0.8 * np.cos(2 * np.pi * (np.arange(24) - 20) / 24)
_WEEKDAY_WEIGHTS = np.array([1.0, 0.95, 0.95, 1.0, 1.05, 1.35, 1.45])
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday

_MAIN_CATEGORIES = ("All Beauty", "Home and Kitchen", "Electronics", "Sports and Outdoors",
                    "Toys and Games", "Clothing Shoes and Jewelry", "Tools and Home Improvement",
                    "Grocery and Gourmet Food")
_LEAF_WORDS = ("Accessories", "Storage", "Tools", "Care", "Lighting", "Gear", "Decor", "Kits",
               "Supplies", "Essentials", "Parts", "Sets")
_STORE_WORDS = ("Norvik", "Altera", "Brightline", "Cobalt", "Dunmore", "Everpine", "Fjordic",
                "Glimmer", "Halcyon", "Ironleaf", "Juniper", "Kestrel")
# Review titles and texts by rating (1..5).
_TITLES = (("Broke quickly", "Not as described"), ("Disappointed", "Meh"), ("It is okay", "Average"),
           ("Pretty good", "Works well"), ("Love it", "Five Stars", "Great value"))
_TITLE_TEXTS = tuple(title for titles in _TITLES for title in titles)
_TITLE_COUNT = np.array([len(titles) for titles in _TITLES])
_TITLE_FIRST = np.cumsum(_TITLE_COUNT) - _TITLE_COUNT
_TEXTS = ("Stopped working after a week.", "Expected better quality.", "Does the job, nothing special.",
          "Good product for the price.", "Exactly what I needed, would buy again.")
_ID_ALPHABET = np.frombuffer(b"0123456789ABCDEFGHJKLMNPQRSTUVWX", dtype=np.uint8)  # base 32


def generate(out_dir: str, *, users: int, items: int, reviews: int, categories: int = 24,
             seed: int = 7, files: int = 2, fs=None) -> dict:
    """Write `reviews` reviews by `users` users of `items` items in `files` part files each
    for reviews and metadata. Returns a summary (paths, counts, seconds, reviews per second).

    Replaces earlier `part-*.jsonl.gz` files in the two folders, so the parts read back are
    exactly this dataset.
    """
    _check_sizes(users=users, items=items, reviews=reviews, categories=categories, files=files)
    started = time.perf_counter()
    root = out_dir
    if fs is None:
        fs, root = filesystem_for(out_dir, S3Config())
    catalogue = _Catalogue.build(items, categories, reviews, np.random.default_rng([seed, 1]))
    counts = _reviews_per_user(users, reviews, np.random.default_rng([seed, 2]))
    meta_files = _write_parts(fs, f"{root}/meta", files, items,
                              lambda lo, hi: _meta_lines(catalogue, lo, hi))
    review_files = _write_parts(fs, f"{root}/reviews", files, users,
                                lambda lo, hi: _review_lines(catalogue, counts, lo, hi, seed))
    seconds = time.perf_counter() - started
    return {"out": out_dir, "reviews": reviews, "users": users, "items": items,
            "categories": categories, "review_files": review_files, "meta_files": meta_files,
            "seconds": round(seconds, 3), "reviews_per_s": round(reviews / seconds)}


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise InputError(f"generate: {name} must be a positive integer, got {value!r}")
    if sizes["reviews"] < sizes["users"]:
        raise InputError(f"generate: reviews ({sizes['reviews']}) must be at least users ({sizes['users']}): "
                         "every user writes one review or more")
    if sizes["categories"] > sizes["items"]:
        raise InputError(f"generate: categories ({sizes['categories']}) must not exceed items ({sizes['items']})")


# ---------------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class _Catalogue:
    category: np.ndarray  # item -> leaf category
    store: np.ndarray  # item -> store index within its category
    price: np.ndarray  # NaN = unknown
    quality: np.ndarray  # mean rating
    expected_reviews: np.ndarray
    next_items: np.ndarray  # items x _NEXT_ITEMS
    by_category: np.ndarray  # items sorted by category
    cumulative: np.ndarray  # popularity summed along by_category
    category_bounds: np.ndarray  # category -> [first, last) in by_category
    category_weight: np.ndarray  # sampling weight of each category as a home category

    @classmethod
    def build(cls, items: int, categories: int, reviews: int, rng: np.random.Generator) -> _Catalogue:
        category_weight = _zipf(categories, 0.8)
        # Every category gets one item, the rest go by category size.
        category = np.concatenate([np.arange(categories),
                                   rng.choice(categories, items - categories, p=category_weight)])
        rng.shuffle(category)
        popularity = _zipf(items, _ZIPF)[rng.permutation(items)]
        by_category = np.argsort(category, kind="stable")
        bounds = np.searchsorted(category[by_category], np.arange(categories + 1))
        catalogue = cls(
            category=category,
            store=np.minimum(rng.zipf(1.6, items) - 1, 7),
            price=_prices(category, categories, rng),
            quality=np.clip(rng.normal(4.1, 0.5, items), 1.5, 5.0),
            expected_reviews=np.round(popularity * reviews).astype(np.int64),
            next_items=np.empty((0, _NEXT_ITEMS), dtype=np.int64),
            by_category=by_category,
            cumulative=np.cumsum(popularity[by_category]),
            category_bounds=bounds,
            category_weight=category_weight,
        )
        return dataclasses.replace(catalogue, next_items=catalogue._draw_next_items(rng))

    def sample(self, category: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per entry of `category`, by popularity within the category."""
        lo = np.where(self.category_bounds[category] > 0, self.cumulative[self.category_bounds[category] - 1], 0.0)
        hi = self.cumulative[self.category_bounds[category + 1] - 1]
        position = np.searchsorted(self.cumulative, lo + rng.random(len(category)) * (hi - lo), side="right")
        position = np.clip(position, self.category_bounds[category], self.category_bounds[category + 1] - 1)
        return self.by_category[position]

    def _draw_next_items(self, rng: np.random.Generator) -> np.ndarray:
        items = len(self.category)
        targets = self.sample(np.repeat(self.category, _NEXT_ITEMS), rng).reshape(items, _NEXT_ITEMS)
        selves = targets == np.arange(items)[:, None]
        redraw = self.sample(np.repeat(self.category, _NEXT_ITEMS), rng).reshape(items, _NEXT_ITEMS)
        return np.where(selves, redraw, targets)  # one redraw: rare self links remain


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def _prices(category: np.ndarray, categories: int, rng: np.random.Generator) -> np.ndarray:
    level = rng.uniform(2.0, 4.5, categories)[category]
    price = np.round(np.exp(level + rng.normal(0, 0.6, len(category))), 2)
    return np.where(rng.random(len(category)) < 0.1, np.nan, price)


# ---------------------------------------------------------------------------------------------
# Users and their reviews


def _reviews_per_user(users: int, reviews: int, rng: np.random.Generator) -> np.ndarray:
    extra = reviews - users  # beyond every user's first
    weights = rng.lognormal(0.0, _ACTIVITY_SIGMA, users)
    if extra == 0:
        return np.ones(users, dtype=np.int64)
    expected = np.minimum(extra * weights / weights.sum(), _MAX_EXPECTED_REVIEWS)
    return 1 + rng.multinomial(extra, expected / expected.sum())


def _review_days(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per review (users one after another), a day in the release window, non-decreasing per user."""
    first = np.cumsum(counts) - counts  # each user's first review in the flat arrays
    pace = np.repeat(rng.lognormal(np.log(20.0), 0.8, len(counts)), counts)  # days between reviews
    gaps = rng.lognormal(np.log(pace), 1.0)
    gaps[first] = 0.0
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[first], counts)
    window = _LAST_DAY - _FIRST_DAY
    span = elapsed[first + counts - 1]
    squeeze = np.minimum(1.0, 0.95 * window / np.maximum(span, 1e-9))  # fit long careers
    start = _FIRST_DAY + rng.random(len(counts)) * (window - span * squeeze)
    return (np.repeat(start, counts) + elapsed * np.repeat(squeeze, counts)).astype(np.int64)


def _review_times_ms(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Millisecond timestamps with weekly and daily rhythms, sorted within each user."""
    day = _review_days(counts, rng)
    weekday = (day + _EPOCH_WEEKDAY) % 7
    day += rng.choice(7, len(day), p=_WEEKDAY_WEIGHTS / _WEEKDAY_WEIGHTS.sum()) - weekday
    day = np.clip(day, _FIRST_DAY, _LAST_DAY)
    hour = rng.choice(24, len(day), p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    ms = ((day * 24 + hour) * 3600 + rng.integers(0, 3600, len(day))) * 1000 + rng.integers(0, 1000, len(day))
    user = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    return np.sort((user << 42) | ms) & ((1 << 42) - 1)  # sort by (user, time) in one pass


def _review_items(catalogue: _Catalogue, counts: np.ndarray, gaps_ms: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Item sequences of all users, step by step over all users at once (longest first)."""
    categories = len(catalogue.category_weight)
    first = np.cumsum(counts) - counts
    order = np.argsort(-counts, kind="stable")
    starts, lengths = first[order], counts[order]
    follow_chance = np.where(gaps_ms < _SOON_DAYS * 86_400_000, _FOLLOW_SOON, _FOLLOW_LATER)
    interest = rng.choice(categories, len(counts), p=catalogue.category_weight)
    items = np.empty(counts.sum(), dtype=np.int64)
    for step in range(int(lengths[0])):
        active = int(np.searchsorted(-lengths, -step, side="left"))  # users with > step reviews
        at = starts[:active] + step
        if step > 0:
            drift = rng.random(active) < _DRIFT
            interest[:active] = np.where(drift, (interest[:active] + rng.choice((-1, 1), active)) % categories,
                                         interest[:active])
        chosen = catalogue.sample(interest[:active], rng)
        if step > 0:
            previous = items[at - 1]
            follows = catalogue.next_items[previous, rng.integers(0, _NEXT_ITEMS, active)]
            follow = rng.random(active) < follow_chance[at]
            chosen = np.where(follow, follows, chosen)
            interest[:active] = np.where(follow, catalogue.category[chosen], interest[:active])
        items[at] = chosen
    return items


def _review_lines(catalogue: _Catalogue, counts: np.ndarray, lo: int, hi: int, seed: int):
    """JSON lines of the reviews of users [lo, hi), a chunk of users at a time."""
    for chunk_lo, chunk_hi in _user_chunks(counts, lo, hi):
        rng = np.random.default_rng([seed, 3, chunk_lo])
        chunk_counts = counts[chunk_lo:chunk_hi]
        times = _review_times_ms(chunk_counts, rng)
        gaps = np.diff(times, prepend=times[:1])  # meaningless at a user's first review, never read there
        items = _review_items(catalogue, chunk_counts, gaps, rng)
        users = np.repeat(np.arange(chunk_lo, chunk_hi), chunk_counts)
        yield _reviews_json(catalogue, users, items, times, rng)


def _user_chunks(counts: np.ndarray, lo: int, hi: int):
    """[lo, hi) cut into runs of whole users with about _CHUNK_REVIEWS reviews each."""
    written = np.cumsum(counts[lo:hi])  # reviews of users lo..u, inclusive
    chunk_lo = lo
    while chunk_lo < hi:
        before = written[chunk_lo - lo - 1] if chunk_lo > lo else 0
        chunk_hi = lo + int(np.searchsorted(written, before + _CHUNK_REVIEWS, side="right"))
        chunk_hi = min(hi, max(chunk_hi, chunk_lo + 1))
        yield chunk_lo, chunk_hi
        chunk_lo = chunk_hi


def _reviews_json(catalogue: _Catalogue, users: np.ndarray, items: np.ndarray, times: np.ndarray,
                  rng: np.random.Generator) -> pa.Buffer:
    rating = np.clip(np.rint(catalogue.quality[items] + rng.normal(0, 0.9, len(items))), 1, 5).astype(np.int64)
    title = _TITLE_FIRST[rating - 1] + rng.integers(0, _TITLE_COUNT[rating - 1])
    asin = _item_ids(items)
    return _json_lines(
        '{"rating": ', _strings(rating), '.0, "title": "', _names(_TITLE_TEXTS, title),
        '", "text": "', _names(_TEXTS, rating - 1),
        '", "images": [], "asin": "', asin, '", "parent_asin": "', asin,
        '", "user_id": "', _user_ids(users), '", "timestamp": ', _strings(times),
        ', "helpful_vote": ', _strings(rng.geometric(0.6, len(items)) - 1),
        ', "verified_purchase": ', _names(("false", "true"), (rng.random(len(items)) < 0.9).astype(np.int64)),
        "}\n")


def _meta_lines(catalogue: _Catalogue, lo: int, hi: int):
    """JSON lines of the metadata of items [lo, hi), a chunk at a time."""
    for chunk_lo in range(lo, hi, _CHUNK_ITEMS):
        item = np.arange(chunk_lo, min(hi, chunk_lo + _CHUNK_ITEMS))
        category = catalogue.category[item]
        rating_number = catalogue.expected_reviews[item]
        average = np.round(catalogue.quality[item], 1)
        price = pa.array(catalogue.price[item], from_pandas=True)  # NaN -> null
        yield _json_lines(
            '{"main_category": "', _names(_MAIN_CATEGORIES, category % len(_MAIN_CATEGORIES)),
            '", "title": "', _names(_LEAF_WORDS, category % len(_LEAF_WORDS)), " item ", _strings(item),
            '", "average_rating": ', _strings(average), ', "rating_number": ', _strings(rating_number),
            ', "features": [], "description": [], "price": ', pc.fill_null(pc.cast(price, pa.string()), "null"),
            ', "images": [], "videos": [], "store": "', _store_names(category, catalogue.store[item]),
            '", "categories": ["', _names(_MAIN_CATEGORIES, category % len(_MAIN_CATEGORIES)),
            '", "', _category_names(category), '"], "details": {}, "parent_asin": "', _item_ids(item),
            '", "bought_together": null}\n')


def _category_names(category: np.ndarray) -> pa.Array:
    word = _names(_LEAF_WORDS, category % len(_LEAF_WORDS))
    main = _names(_MAIN_CATEGORIES, category % len(_MAIN_CATEGORIES))
    return pc.binary_join_element_wise(word, " for ", main, " ", _strings(category // len(_LEAF_WORDS)), "")


def _store_names(category: np.ndarray, store: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(_names(_STORE_WORDS, (category * 5 + store) % len(_STORE_WORDS)),
                                       " ", _strings(store + 1), "")


# ---------------------------------------------------------------------------------------------
# Text


def _json_lines(*parts) -> pa.Buffer:
    """Concatenate string columns and literals row-wise; the bytes of all rows, one buffer.

    Every value is an id, a number or a fixed phrase without quotes or backslashes, so no
    escaping is needed.
    """
    lines = pc.binary_join_element_wise(*parts, "")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
    return lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


def _strings(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def _names(names: tuple[str, ...], index: np.ndarray) -> pa.Array:
    return pa.array(names).take(index)


def _user_ids(users: np.ndarray) -> pa.Array:
    return _ids(b"A", users, digits=12, salt=0x5DEECE66D)


def _item_ids(items: np.ndarray) -> pa.Array:
    return _ids(b"B0", items, digits=8, salt=0x2545F491)


def _ids(prefix: bytes, index: np.ndarray, *, digits: int, salt: int) -> pa.Array:
    """Distinct Amazon-looking ids: a bijective scramble of the index, in base 32."""
    bits = 5 * digits
    mask = np.uint64((1 << bits) - 1)
    x = (index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)) & mask
    x ^= x >> np.uint64(bits // 2)
    x = (x * np.uint64(0xBF58476D1CE4E5B9)) & mask
    width = len(prefix) + digits
    chars = np.empty((len(index), width), dtype=np.uint8)
    chars[:, :len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    for d in range(digits):
        chars[:, width - 1 - d] = _ID_ALPHABET[((x >> np.uint64(5 * d)) & np.uint64(31)).astype(np.intp)]
    offsets = pa.py_buffer(np.arange(len(index) + 1, dtype=np.int32) * width)
    return pa.StringArray.from_buffers(len(index), offsets, pa.py_buffer(chars.tobytes()))


# ---------------------------------------------------------------------------------------------
# Files


def _write_parts(fs, folder: str, parts: int, rows: int, lines_of) -> list[str]:
    """Split [0, rows) into `parts` ranges; each range's lines go to one gzip part file."""
    try:
        fs.makedirs(folder, exist_ok=True)
    except OSError as exc:  # e.g. the output path is a file, or read-only
        raise InputError(f"{folder}: cannot create the output folder ({type(exc).__name__})") from None
    for stale in fs.glob(f"{folder}/part-*.jsonl.gz"):
        fs.rm(stale)
    paths = []
    bounds = np.linspace(0, rows, parts + 1).astype(np.int64)
    for part in range(parts):
        path = f"{folder}/part-{part:05d}.jsonl.gz"
        # zlib's own gzip header carries no time stamp or name: the bytes depend on the data only.
        deflate = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)
        with fs.open(path, "wb") as file:
            for buffer in lines_of(int(bounds[part]), int(bounds[part + 1])):
                file.write(deflate.compress(buffer))
                del buffer  # free this chunk's text before the next one is built
            file.write(deflate.flush())
        paths.append(url_of(fs, path))
    return paths
