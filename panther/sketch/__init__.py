"""Random sketch operators: dense Gaussian/sign sketches, SRHT, count sketch and SJLT.

Every operator is scaled so that ``E ||S x||^2 = ||x||^2`` and takes a ``seed`` (int) or a
``torch.Generator`` for reproducible draws (not both). Random numbers are drawn on the CPU
(or the given generator's device) and then moved, so a seed gives the same sketch on any device.

The functional forms (:func:`srht`, :func:`count_sketch`, :func:`sjlt`) draw a sketch and
apply it once; the ``make_*`` factories return :class:`SRHTSketch`/:class:`SparseSketch`
objects that apply the same randomness to many tensors.
"""

from panther.sketch.dense import gaussian_sketch, sign_sketch
from panther.sketch.hadamard import SRHTSketch, fwht, make_srht, srht
from panther.sketch.sparse import SparseSketch, count_sketch, make_count_sketch, make_sjlt, sjlt

__all__ = [
    "gaussian_sketch",
    "sign_sketch",
    "fwht",
    "srht",
    "count_sketch",
    "sjlt",
    "SRHTSketch",
    "SparseSketch",
    "make_srht",
    "make_count_sketch",
    "make_sjlt",
]
