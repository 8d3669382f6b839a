"""Counter-based seeds: every random stream of a run is a function of (seed, purpose, counters).

This is what makes `fdm train --resume` exact and the data order independent of how a run was
split into invocations or ranks: nothing depends on how many random numbers were drawn before.
"""

from __future__ import annotations

from fdm_cli.errors import UserError

_MASK64 = (1 << 64) - 1
MAX_SEED = (1 << 63) - 1  # seeds are int64 tensors (noise seeds seed + i) and torch generators

# Purposes (stream ids) so that different uses of one seed never share a stream.
DATA_ORDER = 1
DATA_FLIP = 2
TRAIN_STEP = 3
MODEL_INIT = 4


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, *counters: int) -> int:
    """A 63-bit seed derived from `seed` and any number of integer counters (order matters)."""
    h = _splitmix64(seed & _MASK64)
    for c in counters:
        h = _splitmix64(h ^ (c & _MASK64))
    return h & ((1 << 63) - 1)


def check_seeds(seed: int, count: int = 1, flag: str = "`seed`") -> None:
    """Refuse a `seed` whose `count` consecutive seeds (seed + i, one per image) leave
    0..MAX_SEED: they would overflow the int64 tensors the noise is keyed by."""
    if seed < 0 or seed + max(count, 1) - 1 > MAX_SEED:
        raise UserError(
            f"{flag} {seed}: seeds run from 0 to 2^63 - 1 = {MAX_SEED}, and this command uses "
            f"{max(count, 1)} consecutive seed(s) from it"
        )
