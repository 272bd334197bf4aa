"""Three-class multi-Otsu thresholds of many patches at once, identical to scikit-image's.

König et al. threshold every 32 x 32 patch (stride 8) of the bilateral-filtered grey image with
``skimage.filters.threshold_multiotsu(patch, classes=3)`` after min-max normalising it, and call the
pixels below the lowest threshold crack. A 480 x 320 image has about 2,100 such patches; one call of
scikit-image per patch takes 0.3–0.5 s per image. This module computes the same thresholds for all patches
in a few tensor operations (CPU or GPU), bit for bit equal to scikit-image 0.21–0.26:

* **Histogram.** ``threshold_multiotsu(image)`` bins the image with ``numpy.histogram(image, 256)`` over the
  image's own range. For a patch of integer grey levels ``v`` with minimum ``lo`` and range ``R = hi - lo > 0``
  the normalised value is ``x = (v - lo) / R`` and its bin ``min(floor(256 x), 255)``, which is computed
  exactly in integers as ``min(256 (v - lo) // R, 255)`` (the bin edges are multiples of 1/256, the values
  multiples of 1/R with R <= 255, so floating-point rounding never moves a value across an edge). Bin ``k``'s
  centre is ``(2k + 1) / 512``, so "x below the lowest threshold" is the integer test
  ``512 (v - lo) < (2 k0 + 1) R``.
* **Search.** scikit-image (``_multiotsu.pyx``, the look-up-table variant) forms in float32 the cumulative
  zeroth and first moments ``Z``, ``F`` of the normalised histogram (with two quirks kept here: bin 0 enters
  the first moment with weight 1, ``F[0] = p[0]``, and the class ``[0, 0]`` scores 0), the between-class
  terms ``(F_j - F_{i-1})^2 / (Z_j - Z_{i-1})`` (float32 product then float32 division, checked bit for bit),
  and takes the first pair ``(t0, t1)`` in lexicographic order maximising
  ``(var(0, t0) + var(t1 + 1, L - 1)) + var(t0 + 1, t1)``. Moving a threshold across empty bins leaves every
  sum bitwise unchanged, so only the occupied bins, the empty bin 1 and "the bin right after ``t0``" (an empty
  middle class) are candidates: the search runs over ``K x K`` pairs for a patch with ``K`` distinct grey levels
  (typically 20–120) instead of 32,640, with the same first maximiser. The cumulative sums are sequential
  float32 sums (``torch.cumsum`` accumulates in float64 on the CPU and would round differently on arbitrary
  histograms; on patch histograms, whose probabilities are multiples of 1/1024, every order is exact).
* **Few levels.** With exactly 3 occupied bins scikit-image returns the first two (no search); with fewer it
  raises ``ValueError`` (and a flat patch cannot even be normalised: 0 / 0). Here such a patch is *invalid*
  (``valid = False``) and the generator marks none of its pixels as crack, so, through the AND over
  overlapping patches, a patch without three distinct grey levels vetoes crack pixels under it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["grid_crack_mask", "multiotsu_thresholds", "patch_crack_masks", "reference_patch_crack_mask"]

#: work budget of one chunk of the pair search: patches x K x K float32 elements per temporary.
_CHUNK_ELEMENTS = 1 << 20


def _cumsum_f32(values: Tensor) -> Tensor:
    """Sequential float32 prefix sums along dim 1 (the order scikit-image's Cython loop adds in).

    NumPy's ``cumsum`` adds sequentially in the array's dtype; ``torch.cumsum`` accumulates float32 in float64
    on the CPU (and in a parallel scan on the GPU), so on other devices the sum runs column by column.
    """
    if values.device.type == "cpu":
        return torch.from_numpy(np.cumsum(values.numpy(), axis=1, dtype=np.float32))
    columns = values.t().contiguous()
    for m in range(1, columns.shape[0]):
        columns[m] += columns[m - 1]
    return columns.t()


def _pair_search(prob: Tensor, occupied: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """First maximiser ``(t0, t1)`` of scikit-image's 3-class search for histograms with >= 4 levels.

    Rows are the candidate ``t0`` in increasing order (bin 0; bin 1 when it is empty; each occupied bin), columns
    the candidate ``t1`` for that row in increasing order (column 0: ``t0 + 1`` when that bin is empty, an empty
    middle class; column ``b >= 1``: occupied bin ``b``); a row-major argmax is the loop's first maximum.
    """
    n, nbins = prob.shape
    device = prob.device
    kmax = int(counts.max())
    neg_inf = torch.full((), -torch.inf, device=device)
    # the occupied bins in increasing order, padded with the first one: bin t goes to column rank(t)
    rank = torch.where(occupied, occupied.cumsum(dim=1) - 1, kmax)
    u = torch.zeros(n, kmax + 1, dtype=torch.long, device=device)
    u.scatter_(1, rank, torch.arange(nbins, device=device).expand(n, -1))
    u = u[:, :kmax]
    col = torch.arange(kmax, device=device)
    col_in = col[None, :] < counts[:, None]
    u = torch.where(col_in, u, u[:, :1])
    p = torch.where(col_in, prob.gather(1, u), torch.zeros((), device=device))
    rel = u - u[:, :1]  # intensity of a bin relative to the first occupied one (scikit-image trims)
    weighted = rel.to(torch.float32) * p
    weighted[:, 0] = p[:, 0]  # quirk: first_moment[0] = prob[0]
    z = _cumsum_f32(p)
    f = _cumsum_f32(weighted)
    last = (counts - 1)[:, None]
    z_tot, f_tot = z.gather(1, last), f.gather(1, last)
    r_last = rel.gather(1, last)  # L - 1, L the length of the trimmed histogram

    def between(f_a: Tensor, z_a: Tensor, f_b: Tensor, z_b: Tensor) -> Tensor:
        """(f_b - f_a)^2 / (z_b - z_a) in float32, 0 where the class is empty."""
        dz = z_b - z_a
        value = f_b - f_a
        value.square_().div_(dz)
        return value.masked_fill_(dz <= 0, 0.0)

    # row j: 0 -> t0 = bin 0; 1 -> t0 = bin 1 when empty; j >= 2 -> t0 = occupied bin j - 1
    row_a = torch.cat([torch.zeros(2, dtype=torch.long, device=device), torch.arange(1, kmax - 1, device=device)])
    f_row, z_row = f[:, row_a], z[:, row_a]
    a_term = f_row * f_row / z_row
    a_term[:, 0] = 0.0  # quirk: var(0, 0) is never filled in
    t0_rel = rel[:, row_a]
    t0_rel[:, 1] = 1
    row_ok = (row_a[None, :] <= counts[:, None] - 2) & (t0_rel <= r_last - 2)
    row_ok[:, 1] &= rel[:, 1] > 1  # the empty-bin-1 row exists only when bin 1 is empty
    rel_next = rel[:, (row_a + 1).clamp(max=kmax - 1)]
    empty_next = rel_next > t0_rel + 1  # bin t0 + 1 is empty: t1 = t0 + 1 leaves the middle class empty
    empty_next[:, 1] = rel[:, 1] > 2
    col_ok = (col[None, :] >= 1) & (col[None, :] <= counts[:, None] - 2)
    a_masked = torch.where(row_ok, a_term, neg_inf)
    c_masked = torch.where(col_ok, between(f, z, f_tot, z_tot), neg_inf)
    sigma = a_masked[:, :, None] + c_masked[:, None, :]  # A + C, then (A + C) + M as scikit-image adds
    strictly_increasing = bool(((z[:, 1:] > z[:, :-1]) | ~col_in[:, 1:]).all())
    if strictly_increasing:
        # no bin is absorbed in float32 (always so for patch histograms): z_b - z_a > 0 exactly when column b
        # comes after row a's t0 (a mask that depends on the positions only), and the columns past the patch's
        # levels get z = inf (a middle term of 0 beside their -inf C term) instead of 0 / 0
        z_col = z.masked_fill(~col_in, torch.inf)
        dz = z_col[:, None, :] - z_row[:, :, None]
        middle = f[:, None, :] - f_row[:, :, None]
        middle.square_().div_(dz).masked_fill_(col[None, :] <= row_a[:, None], -torch.inf)
    else:
        sigma.add_(torch.where(col[None, :] > row_a[:, None], 0.0, neg_inf))  # t1 after t0 (+ 0.0 is exact)
        middle = between(f_row[:, :, None], z_row[:, :, None], f[:, None, :], z[:, None, :])
    sigma.add_(middle)
    sigma[:, :, 0] = torch.where(empty_next & row_ok, a_term + between(f_row, z_row, f_tot, z_tot), neg_inf)
    best = sigma.view(n, -1).argmax(dim=1)  # the first maximum, as the strict '>' of the Cython loop
    row, column = best // kmax, best % kmax
    t0 = t0_rel.gather(1, row[:, None])[:, 0] + u[:, 0]
    t1 = torch.where(column == 0, t0 + 1, u.gather(1, column[:, None])[:, 0])
    return t0, t1


def multiotsu_thresholds(hist: Tensor, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """Bin indices of the two 3-class multi-Otsu thresholds of many histograms, as scikit-image.

    Equal to ``skimage.filters.threshold_multiotsu(classes=3)``: with ``normalize`` it reproduces the image
    path (``prob = counts / counts.sum()`` in float64, then float32), without it the ``hist=counts`` path
    (counts used as they are, in float32). Leading and trailing empty bins are trimmed as scikit-image does;
    the indices returned are positions in the untrimmed ``hist``.

    Args:
        hist: ``(N, nbins)`` non-negative counts (any dtype).
        normalize: divide each histogram by its sum first.

    Returns:
        ``(thresholds, valid)``: ``(N, 2)`` long bin indices ``t0 < t1`` (the classes are ``<= t0``,
        ``t0 < . <= t1``, ``> t1``) and a ``(N,)`` bool, False for histograms with fewer than 3 occupied bins
        (scikit-image raises ``ValueError`` there; their thresholds are 0).
    """
    if hist.ndim != 2:
        raise ValueError(f"hist must be (N, nbins), got shape {tuple(hist.shape)}")
    n, nbins = hist.shape
    device = hist.device
    if normalize:
        total = hist.sum(dim=1, keepdim=True, dtype=torch.float64)
        prob = (hist.to(torch.float64) / total.clamp(min=1e-300)).to(torch.float32)
    else:
        prob = hist.to(torch.float32)
    occupied = prob > 0
    counts = occupied.sum(dim=1)
    t0 = torch.zeros(n, dtype=torch.long, device=device)
    t1 = torch.zeros(n, dtype=torch.long, device=device)
    three = counts == 3
    if bool(three.any()):  # scikit-image: the first two occupied bins, no search
        first_two = torch.where(occupied[three], torch.arange(nbins, device=device), nbins).sort(dim=1).values
        t0[three], t1[three] = first_two[:, 0], first_two[:, 1]
    search = torch.nonzero(counts > 3).flatten()
    if search.numel():
        # chunks of patches with similar level counts bound the K x K temporaries
        order = search[counts[search].argsort()]
        level_counts = counts[order].tolist()
        start = 0
        while start < order.numel():
            stop = start + 1
            while stop < order.numel() and (stop - start + 1) * level_counts[stop] ** 2 <= _CHUNK_ELEMENTS:
                stop += 1
            index = order[start:stop]
            t0[index], t1[index] = _pair_search(prob[index], occupied[index], counts[index])
            start = stop
    return torch.stack([t0, t1], dim=1), counts >= 3


def _crack_limits(levels: Tensor, lo: Tensor, spread: Tensor) -> Tensor:
    """Per patch, the grey level below which a pixel is crack (0 for a patch that cannot be thresholded).

    Args:
        levels: ``(N, 256)`` histograms of the patches' grey levels.
        lo: ``(N, 1)`` int32 patch minimum.
        spread: ``(N, 1)`` int32 patch maximum - minimum.

    Returns:
        ``(N, 1)`` int32 limit ``lo + ceil((2 k0 + 1) R / 512)``, ``<= 255``; 0 where the patch has fewer than 3
        distinct grey levels.
    """
    offsets = (torch.arange(256, device=levels.device, dtype=torch.int32)[None, :] - lo).clamp(min=0)
    bins = torch.clamp(offsets * 256 // spread.clamp(min=1), max=255).to(torch.long)
    hist = torch.zeros_like(levels).scatter_add_(1, bins, levels)  # levels outside [lo, hi] add 0
    thresholds, valid = multiotsu_thresholds(hist)
    k0 = thresholds[:, :1].to(torch.int32)
    limit = lo + ((2 * k0 + 1) * spread + 511) // 512  # <= hi <= 255
    return torch.where(valid[:, None], limit, torch.zeros_like(limit))


def patch_crack_masks(patches: Tensor, chunk: int = 8192) -> Tensor:
    """Crack pixels of many grey patches: min-max normalise, 3-class multi-Otsu, below the lowest threshold.

    The vectorised equivalent of :func:`reference_patch_crack_mask` applied to every patch. Per pixel it only
    takes the patch minimum / maximum, one ``bincount`` of the grey levels and a final comparison: the histogram
    of the normalised patch is built from the 256-level histogram (each grey level ``v`` falls in bin
    ``min(256 (v - lo) // R, 255)``), and "below the lowest threshold" ``512 (v - lo) < (2 k0 + 1) R`` is
    ``v < lo + ceil((2 k0 + 1) R / 512)``.

    Args:
        patches: ``(N, P)`` uint8 grey levels, one flattened patch per row.
        chunk: patches processed together (bounds the temporaries to about ``chunk x P x 5`` bytes).

    Returns:
        ``(N, P)`` bool, True where a pixel is darker than its patch's lowest threshold; all False for a patch
        with fewer than 3 distinct grey levels.
    """
    if patches.dtype != torch.uint8:
        raise ValueError(f"patches must be uint8 grey levels, got {patches.dtype}")
    if patches.shape[0] > chunk:
        return torch.cat([patch_crack_masks(patches[start:start + chunk], chunk)
                          for start in range(0, patches.shape[0], chunk)])
    n, device = patches.shape[0], patches.device
    lo = patches.amin(dim=1, keepdim=True).to(torch.int32)
    spread = patches.amax(dim=1, keepdim=True).to(torch.int32) - lo
    rows = torch.arange(n, device=device, dtype=torch.int32)[:, None] * 256
    levels = torch.bincount((patches.to(torch.int32) + rows).flatten(), minlength=n * 256).view(n, 256)
    return patches < _crack_limits(levels, lo, spread).to(torch.uint8)


def grid_crack_mask(grey: Tensor, size: int = 32, stride: int = 8, band_rows: int | None = None) -> Tensor:
    """König et al.'s thresholding of a whole grey image: crack = below the lowest 3-class multi-Otsu threshold
    of *every* ``size`` x ``size`` patch (stride ``stride``) covering the pixel.

    The same result as cutting every patch, :func:`patch_crack_masks` and AND-ing the overlapping patches, with
    each pixel touched about once instead of ``(size / stride)^2`` times, because a patch is a
    ``k x k`` block of ``stride x stride`` cells (``k = size / stride``):

    * a patch's grey-level histogram is the sum of its cells' histograms (one ``bincount`` of the image, then
      ``k`` shifted sums down and ``k`` across), its minimum / maximum the min / max of its cells';
    * "``v`` below the limit of every covering patch" is "``v`` below the smallest limit of the patches covering
      its cell" (a ``k x k`` min-pool of the patch limits), one comparison per pixel.

    Args:
        grey: ``(H, W)`` uint8, ``H`` and ``W`` multiples of ``size`` (the generator mirror-pads).
        size: patch side (32).
        stride: patch stride (8); must divide ``size``.
        band_rows: compute the mask in horizontal bands of about this many rows (each with the ``size - stride``
            rows above and below whose patches cover it), bounding the temporaries of a large photo to its
            band; the result is the same, bit for bit. None: the whole image at once.

    Returns:
        ``(H, W)`` bool crack mask.
    """
    if grey.dtype != torch.uint8 or grey.ndim != 2:
        raise ValueError(f"grey must be a 2-D uint8 image, got {grey.dtype} {tuple(grey.shape)}")
    if size % stride:
        raise ValueError(f"the patch size {size} must be a multiple of the stride {stride}")
    height, width = grey.shape
    if height % size or width % size:
        raise ValueError(f"the image ({width}x{height}) must be padded to a multiple of the patch size {size}")
    margin = size - stride  # the rows of the patches that cover a band's first / last row
    if band_rows is None or height <= band_rows + 2 * margin:
        return _grid_crack_mask(grey, size, stride)
    step = max(stride, band_rows // stride * stride)
    mask = torch.empty(grey.shape, dtype=torch.bool, device=grey.device)
    for top in range(0, height, step):
        bottom = min(height, top + step)
        start, stop = max(0, top - margin), min(height, bottom + margin)
        mask[top:bottom] = _grid_crack_mask(grey[start:stop], size, stride)[top - start:bottom - start]
    return mask


def _grid_crack_mask(grey: Tensor, size: int, stride: int) -> Tensor:
    """:func:`grid_crack_mask` of ``grey`` whose sides are multiples of ``stride`` (a band of a padded image:
    the patches are those lying inside it)."""
    height, width = grey.shape
    k, device = size // stride, grey.device
    rows, cols = height // stride, width // stride
    cells = grey.view(rows, stride, cols, stride).permute(0, 2, 1, 3).reshape(rows * cols, stride * stride)
    offsets = torch.arange(rows * cols, device=device, dtype=torch.int32)[:, None] * 256
    cell_hist = torch.bincount((cells.to(torch.int32) + offsets).flatten(), minlength=rows * cols * 256)
    gh, gw = rows - k + 1, cols - k + 1
    per_cell = cell_hist.view(rows, cols, 256).to(torch.int32)
    across = per_cell[:gh].clone()  # sums of k cells down, then k cells across: the (gh, gw, 256) patch histograms
    for i in range(1, k):
        across += per_cell[i:i + gh]
    levels = across[:, :gw].clone()
    for j in range(1, k):
        levels += across[:, j:j + gw]
    # window min / max over k x k cells (grey levels are exact in float32)
    cell_lo = cells.amin(dim=1).view(1, 1, rows, cols).float()
    cell_hi = cells.amax(dim=1).view(1, 1, rows, cols).float()
    lo = (-F.max_pool2d(-cell_lo, k, stride=1)).view(gh * gw, 1).to(torch.int32)
    hi = F.max_pool2d(cell_hi, k, stride=1).view(gh * gw, 1).to(torch.int32)
    limit = _crack_limits(levels.reshape(gh * gw, 256), lo, hi - lo).view(1, 1, gh, gw).float()
    # the smallest limit over the patches covering each cell; outside the patch grid: no constraint (256)
    padded = F.pad(limit, (k - 1, k - 1, k - 1, k - 1), value=256.0)
    cell_limit = (-F.max_pool2d(-padded, k, stride=1)).view(rows * cols, 1)  # (rows, cols) cells
    crack = cells.to(torch.float32) < cell_limit
    return crack.view(rows, cols, stride, stride).permute(0, 2, 1, 3).reshape(height, width)


def reference_patch_crack_mask(patch: np.ndarray) -> np.ndarray:
    """König et al.'s per-patch rule with scikit-image, written for clarity (the test oracle).

    Args:
        patch: ``(h, w)`` grey levels.

    Returns:
        ``(h, w)`` bool: pixels of the min-max normalised patch below the lowest 3-class multi-Otsu threshold;
        all False when the patch has fewer than 3 distinct grey levels (scikit-image cannot threshold it).
    """
    from skimage.filters import threshold_multiotsu

    values = patch.astype(np.float64)
    lo, hi = values.min(), values.max()
    if hi == lo:
        return np.zeros(patch.shape, bool)
    normalised = (values - lo) / (hi - lo)
    try:
        thresholds = threshold_multiotsu(normalised, classes=3)
    except ValueError:  # fewer than 3 distinct levels
        return np.zeros(patch.shape, bool)
    return normalised < thresholds[0]
