"""Connected components of every upper level set of many small images, in one sweep.

The protocol thresholds a score map at up to 255 cut levels and asks OpenCV for
the contours of each binary image; redoing the labelling at every level costs
levels x pixels. Here the components of *all* levels come from one component
tree (max-tree) per image, built with array operations only:

* The image (one ``uint8`` per pixel; a pixel is "on" at level ``l`` when its
  value is ``>= l``) is cut into 2x2 blocks. Any subset of a 2x2 block is
  8-connected, so with 8-connectivity a block's on part is a single connected
  piece at every level, and two neighbouring blocks are connected at level
  ``l`` exactly when some pair of 8-adjacent pixels across them is on: each
  block-graph edge has a weight, the highest level at which it connects. With
  4-connectivity the same holds except for a block whose on pixels can be
  exactly one diagonal; one pixel of such a block is taken out into a node of
  its own (the other three are then always connected through their highest).
* Every block points to a 4-neighbour block that it is connected to at every
  level where it is on (edge weight equal to its own maximum) and whose maximum
  is at least as high. Following the pointers climbs to a local maximum; each
  tree of this forest (a "basin", labelled with one ``cv2.connectedComponents``
  call on an image of blocks and pointers) is connected at every level, since
  the path to its root never drops. A basin that meets a higher one at its own
  top level (plateaus, diagonal steps) is merged into it the same way, which
  leaves about one basin per regional maximum.
* The components at level ``l`` are unions of basins joined by edges of
  weight ``>= l``: a Kruskal sweep over the few edges between basins, from the
  top level down, records which basins form a component at each level.
* A basin's box at each level comes from its per-row and per-column maxima
  (its first row whose maximum is ``>= l``, and so on).

Everything is vectorised over a batch of images; Python loops run over levels
(at most 255) and a few pointer-jumping rounds, never over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Lowest set bit of a byte (the chosen direction of each block's candidate mask);
# 8 means "no candidate": the block is the root of its basin.
_LOWEST_BIT = np.array([8] + [(i & -i).bit_length() - 1 for i in range(1, 256)], np.uint8)


@dataclass
class Components:
    """One record per (image, level, component); coordinates are canvas pixels."""

    image: np.ndarray  # index of the image in the batch
    level: np.ndarray  # level l >= 1 (pixels with value >= l are on)
    x0: np.ndarray  # inclusive pixel box
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    area2: np.ndarray | None = None  # twice the bit-quad area of the on pixels
    border: np.ndarray | None = None  # highest level at which it touches a border pixel


def _pairs(h: int, w: int, dy: int, dx: int):
    """Index tuples selecting blocks n and their neighbours n + (dy, dx), dy >= 0."""
    ys, yd = slice(0, h - dy), slice(dy, h)
    if dx >= 0:
        xs, xd = slice(0, w - dx), slice(dx, w)
    else:
        xs, xd = slice(-dx, w), slice(0, w + dx)
    return (slice(None), ys, xs), (slice(None), yd, xd)


def _union(parent: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Joins the sets of u[i] and v[i] (parent fully compressed, parent[i] <= i).

    Returns the fully compressed parent array.
    """
    while u.size:
        ru, rv = parent[u], parent[v]
        diff = ru != rv
        if not diff.any():
            break
        u, v, ru, rv = u[diff], v[diff], ru[diff], rv[diff]
        parent[np.maximum(ru, rv)] = np.minimum(ru, rv)
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    return parent


class _Grid:
    """The block graph of a batch of canvases ``a [B, 2h, 2w]``."""

    def __init__(self, a: np.ndarray, conn: int):
        bsz, hh, ww = a.shape
        h, w = hh // 2, ww // 2
        self.bsz, self.h, self.w, self.conn = bsz, h, w, conn
        blk = np.ascontiguousarray(a.reshape(bsz, h, 2, w, 2).transpose(2, 4, 0, 1, 3))
        a00, a01, a10, a11 = blk[0, 0], blk[0, 1], blk[1, 0], blk[1, 1]
        # single-pixel nodes taken out of diagonal-only blocks (4-connectivity only)
        self.extra = None
        if conn == 4:
            d1 = np.minimum(a00, a11) > np.maximum(a01, a10)  # on pixels can be tl+br only
            d2 = np.minimum(a01, a10) > np.maximum(a00, a11)  # tr+bl only
            if d1.any() or d2.any():
                self.extra = self._take_out(a, a00, a01, a10, a11, d1, d2)
        self.corners = (a00, a01, a10, a11)
        self.v = np.maximum(np.maximum(a00, a01), np.maximum(a10, a11))
        self.edges = self._edge_weights()

    def _take_out(self, a, a00, a01, a10, a11, d1, d2):
        """Moves the bottom-right (d1) or bottom-left (d2) pixel of each block whose on
        pixels can be exactly one diagonal into a node of its own. The block keeps
        three pixels, connected at every level through the highest of them (the
        corner between the other two). Returns the single-pixel nodes as
        ``(image, canvas y, canvas x, value, edges)`` with ``edges`` a list of
        ``(neighbour node, weight)``; node ids >= number of blocks are these nodes.
        """
        h, w = self.h, self.w
        nblocks = self.bsz * h * w
        b1, i1, j1 = np.nonzero(d1)
        b2, i2, j2 = np.nonzero(d2)
        b = np.concatenate([b1, b2])
        y = np.concatenate([2 * i1 + 1, 2 * i2 + 1])
        x = np.concatenate([2 * j1 + 1, 2 * j2])
        val = a[b, y, x]
        a11[b1, i1, j1] = 0
        a10[b2, i2, j2] = 0
        hh, ww = a.shape[1:]
        lin = (b.astype(np.int64) * hh + y) * ww + x
        sort = np.argsort(lin)
        slin = lin[sort]
        edges = []
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            ny, nx = y + dy, x + dx
            ok = (ny >= 0) & (ny < hh) & (nx >= 0) & (nx < ww)
            ny, nx = np.clip(ny, 0, hh - 1), np.clip(nx, 0, ww - 1)
            nlin = (b.astype(np.int64) * hh + ny) * ww + nx
            pos = np.minimum(np.searchsorted(slin, nlin), slin.size - 1)
            taken = slin[pos] == nlin
            node = np.where(taken, nblocks + sort[pos], (b * h + ny // 2) * w + nx // 2)
            wt = np.where(ok, np.minimum(val, a[b, ny, nx]), 0).astype(np.uint8)
            edges.append((node, wt))
        return b, y, x, val, edges

    def _edge_weights(self):
        """Forward edges ``[(dy, dx, weight [B, h, w])]``, stored at the first block."""
        a00, a01, a10, a11 = self.corners
        shape = a00.shape
        h, w = self.h, self.w
        out = []
        if self.conn == 8:
            r0, r1 = np.maximum(a00, a01), np.maximum(a10, a11)
            k0, k1 = np.maximum(a00, a10), np.maximum(a01, a11)
            self.lines = (r0, r1, k0, k1)
            specs = ((0, 1, k1, k0), (1, 0, r1, r0), (1, 1, a11, a00), (1, -1, a10, a01))
            for dy, dx, near, far in specs:
                wt = np.zeros(shape, np.uint8)
                src, dst = _pairs(h, w, dy, dx)
                np.minimum(near[src], far[dst], out=wt[src])
                out.append((dy, dx, wt))
        else:
            self.lines = (
                np.maximum(a00, a01),
                np.maximum(a10, a11),
                np.maximum(a00, a10),
                np.maximum(a01, a11),
            )
            for dy, dx, p, q, r, s in ((0, 1, a01, a00, a11, a10), (1, 0, a10, a00, a11, a01)):
                src, dst = _pairs(h, w, dy, dx)
                wt = np.zeros(shape, np.uint8)
                np.maximum(np.minimum(p[src], q[dst]), np.minimum(r[src], s[dst]), out=wt[src])
                out.append((dy, dx, wt))
        return out

    def basins(self):
        """Label ``[B, h, w]`` (-1 where never on) of each block's uphill tree, the tree
        count, and the root blocks (flat indices, one per tree, in label order).

        Each block points to one 4-neighbour that it is connected to at every level
        where it is on and that is higher (or equal, east/south only, so pointers
        never cycle); the trees are then the connected components of an image with
        one pixel per block and one per pointer, labelled by OpenCV.
        """
        v, h, w, bsz = self.v, self.h, self.w, self.bsz
        (_, _, we), (_, _, ws) = self.edges[0], self.edges[1]
        src_e, dst_e = _pairs(h, w, 0, 1)
        src_s, dst_s = _pairs(h, w, 1, 0)
        on = v > 0
        go_e = (we == v) & on  # east neighbour is at least as high: v[n+E] >= w = v[n]
        go_s = (ws == v) & on & ~go_e
        free = on & ~go_e & ~go_s
        go_w = np.zeros(v.shape, bool)  # west neighbour strictly higher
        go_w[dst_e] = (we[src_e] == v[dst_e]) & (v[src_e] > v[dst_e])
        go_w &= free
        free &= ~go_w
        go_n = np.zeros(v.shape, bool)
        go_n[dst_s] = (ws[src_s] == v[dst_s]) & (v[src_s] > v[dst_s])
        go_n &= free
        img = np.zeros((bsz, 2 * h, 2 * w), np.uint8)
        img[:, 0::2, 0::2] = on
        link_h = go_e.copy()
        link_h[src_e] |= go_w[dst_e]
        img[:, 0::2, 1::2] = link_h
        link_v = go_s.copy()
        link_v[src_s] |= go_n[dst_s]
        img[:, 1::2, 0::2] = link_v
        n, lab = cv2.connectedComponents(
            img.reshape(bsz * 2 * h, 2 * w), connectivity=8, ltype=cv2.CV_32S
        )
        lab = lab.reshape(bsz, 2 * h, 2 * w)[:, 0::2, 0::2] - 1
        roots = np.flatnonzero(free & ~go_n)
        order = np.argsort(lab.ravel()[roots])
        return np.ascontiguousarray(lab), n - 1, roots[order]


def _tables(lab: np.ndarray, s0: np.ndarray, s1: np.ndarray, nb: int, nl: int, na: int, line_of):
    """Per (block line, label) maxima ``[nl, nb]`` of two uint8 arrays over runs of equal
    label. ``lab``/``s0``/``s1`` are flat; runs are cut every ``na`` elements, and
    ``line_of(run_start)`` gives the block line of a run."""
    flat = lab.reshape(-1, na)
    boundary = np.ones(flat.shape, bool)
    np.not_equal(flat[:, 1:], flat[:, :-1], out=boundary[:, 1:])
    starts = np.flatnonzero(boundary)
    sb = lab.ravel()[starts]
    keep = sb >= 0
    key = line_of(starts[keep]) * nb + sb[keep]
    t0 = np.zeros(nl * nb, np.uint8)
    t1 = np.zeros(nl * nb, np.uint8)
    m0 = np.maximum.reduceat(s0.ravel(), starts)[keep]
    m1 = np.maximum.reduceat(s1.ravel(), starts)[keep]
    np.maximum.at(t0, key, m0)
    np.maximum.at(t1, key, m1)
    return t0.reshape(nl, nb), t1.reshape(nl, nb)


def _first_reaching(m: np.ndarray, lmax: int) -> np.ndarray:
    """``out[l-1, b]`` = first line i with ``max(m[:i+1, b]) >= l``, for l = 1..lmax
    (garbage where no line reaches l); ``m`` is ``[n_lines, nb]`` uint8."""
    nl, nb = m.shape
    pm = np.maximum.accumulate(m, axis=0)
    rec = np.empty(pm.shape, bool)
    rec[0] = pm[0] > 0
    np.greater(pm[1:], pm[:-1], out=rec[1:])
    i, b = np.nonzero(rec)
    first = np.full((lmax + 1, nb), nl, np.int16)
    first[pm[i, b], b] = i  # the prefix max strictly grows at these lines: no clashes
    return np.minimum.accumulate(first[:0:-1], axis=0)[::-1]


def _extents(t0: np.ndarray, t1: np.ndarray, lmax: int):
    """Lowest and highest pixel line ``[lmax, nb]`` of each label at levels 1..lmax,
    from its per block line maxima of the first (``t0``) and second (``t1``) pixel
    line (``[n_lines, nb]``). Garbage where the label is absent at that level."""
    nl, nb = t0.shape
    lines = np.empty((2 * nl, nb), np.uint8)
    lines[0::2] = t0
    lines[1::2] = t1
    lo = _first_reaching(lines, lmax)
    hi = (2 * nl - 1) - _first_reaching(lines[::-1], lmax)
    return lo, hi


def _kruskal(vb: np.ndarray, eu: np.ndarray, ev: np.ndarray, ew: np.ndarray, lmax: int):
    """Representative of every present basin at every level: ``(basin, level, rep)`` for
    all ``level <= vb[basin]``, the representative being the smallest basin index of
    the component."""
    nb = vb.size
    order = np.argsort(255 - vb, kind="stable")
    n_at = np.cumsum(np.bincount(vb, minlength=257)[::-1])[::-1]  # n_at[l] = #(vb >= l)
    eo = np.argsort(255 - ew, kind="stable")
    eu, ev = eu[eo], ev[eo]
    e_end = np.cumsum(np.bincount(ew, minlength=257)[::-1])[::-1]  # #(w >= l)
    parent = np.arange(nb, dtype=eu.dtype)
    reps = []
    for lev in range(lmax, 0, -1):
        lo, hi = e_end[lev + 1], e_end[lev]
        if hi > lo:
            parent = _union(parent, eu[lo:hi], ev[lo:hi])
        reps.append(parent[order[: n_at[lev]]])
    counts = n_at[lmax:0:-1]
    levels = np.repeat(np.arange(lmax, 0, -1), counts)
    basins = np.concatenate([order[:k] for k in counts])
    return basins, levels, np.concatenate(reps)


def _area2(corners, lab: np.ndarray, lmax: int, nb: int) -> np.ndarray:
    """Twice the bit-quad area ``[lmax, nb]`` of each label's on pixels at each level.

    A 2x2 pixel cell with 4 on corners adds 1, with 3 on corners 1/2 (the polygon
    through the pixel centres that OpenCV's contour follows cuts it on the
    diagonal): in halves, a cell whose two lowest corners are s1 <= s2 adds 1 at the
    levels <= s2 and 1 more at the levels <= s1. A cell counts for the label of a
    block holding one of its on corners: with 3 or 4 on corners the block at its
    top-left holds one, except for a cell at the corner of four blocks whose
    top-left pixel is the only off one.
    """
    a00, a01, a10, a11 = corners
    h, w = a00.shape[1:]
    stride = lmax + 1
    base = np.where(lab >= 0, lab, nb).astype(np.int32)  # nb: a dummy label
    base *= stride
    size = (nb + 1) * stride
    hist = np.zeros(size, np.int64)

    def lows(x0, x1, x2, x3):
        """The lowest and second lowest of four corners."""
        p, q = np.minimum(x0, x1), np.maximum(x0, x1)
        r, t = np.minimum(x2, x3), np.maximum(x2, x3)
        return np.minimum(p, r), np.minimum(np.maximum(p, r), np.minimum(q, t))

    s1, s2 = lows(a00, a01, a10, a11)
    hist += np.bincount((base + s1).ravel(), minlength=size)
    hist += np.bincount((base + s2).ravel(), minlength=size)
    for dy, dx, c in ((0, 1, (a01, a11, a00, a10)), (1, 0, (a10, a11, a00, a01))):
        src, dst = _pairs(h, w, dy, dx)
        s1, s2 = lows(c[0][src], c[1][src], c[2][dst], c[3][dst])
        hist += np.bincount((base[src] + s1).ravel(), minlength=size)
        hist += np.bincount((base[src] + s2).ravel(), minlength=size)
    src, dst = _pairs(h, w, 1, 1)
    e_src = (slice(None), slice(0, h - 1), slice(1, w))
    s_src = (slice(None), slice(1, h), slice(0, w - 1))
    c0, c1, c2, c3 = a11[src], a10[e_src], a01[s_src], a00[dst]
    s1, s2 = lows(c0, c1, c2, c3)
    att = np.where(c0 < np.minimum(np.minimum(c1, c2), c3), base[e_src], base[src])
    hist += np.bincount((base[src] + s1).ravel(), minlength=size)
    hist += np.bincount((att + s2).ravel(), minlength=size)
    hist = hist.reshape(nb + 1, stride)[:nb].T
    return np.cumsum(hist[:0:-1], axis=0)[::-1]  # [lmax, nb]: events at levels >= l


def components(
    a: np.ndarray,
    conn: int,
    lmax: int,
    *,
    area: bool = False,
    border: np.ndarray | None = None,
) -> Components:
    """Boxes of the connected components of ``a >= l``, for every level l = 1..lmax.

    Args:
      a: ``[B, 2h, 2w]`` uint8 values on an even-sized canvas, 0 outside the images.
      conn: 8 or 4 (pixel connectivity).
      lmax: the highest level asked for (levels above an image's maximum are empty).
      area: also give twice the bit-quad area of each component's pixels (8 only).
      border: optional ``[2h, 2w]`` bool, the images' border pixels on the canvas;
        each record then carries the highest level at which its component contains
        one of them.
    """
    grid = _Grid(a, conn)
    bsz, h, w = grid.bsz, grid.h, grid.w
    lab, nb, roots = grid.basins()
    v = grid.v.ravel()
    vb = v[roots]
    bimage = roots // (h * w)

    # edges between basins
    eu, ev, ew = [], [], []
    for dy, dx, wt in grid.edges:
        src, dst = _pairs(h, w, dy, dx)
        ba, bb, ww = lab[src], lab[dst], wt[src]
        m = np.flatnonzero((ba != bb) & (ww > 0))
        eu.append(ba.ravel()[m])
        ev.append(bb.ravel()[m])
        ew.append(ww.ravel()[m])
    # single-pixel nodes taken out of diagonal-only blocks: one basin each
    nx_ = 0
    if grid.extra is not None:
        xb, xy_y, xy_x, xval, xedges = grid.extra
        nx_ = xb.size
        node_basin = np.concatenate([lab.ravel(), nb + np.arange(nx_, dtype=np.int32)])
        xid = nb + np.arange(nx_, dtype=np.int32)
        for node, wt in xedges:
            nl = node_basin[node]
            m = (wt > 0) & (nl >= 0)
            eu.append(xid[m])
            ev.append(nl[m])
            ew.append(wt[m])
        vb = np.concatenate([vb, xval])
        bimage = np.concatenate([bimage, xb])
        nb += nx_
    if nb == 0:
        e = np.zeros(0, np.int64)
        return Components(e, e, e, e, e, e, e if area else None, e if border is not None else None)
    eu = np.concatenate(eu).astype(np.int32)
    ev = np.concatenate(ev).astype(np.int32)
    ew = np.concatenate(ew)

    # Plateaus and ties leave several basins under one maximum. A basin joined to a
    # higher one (or an equal one with a larger index) by an edge at its own top
    # level is connected to it wherever it exists: point it there (one pointer per
    # basin, so the trees stay connected at every level) and merge each tree. Only
    # edges at a basin's root block are looked at (a subset is enough).
    sup = np.full(nb, -1, np.int32)
    ra, rb, rw = [], [], []
    nroot = roots.size
    ry, rx = (roots // w) % h, roots % w
    for dy, dx, wt in grid.edges:
        off = dy * w + dx
        fwd = (ry + dy < h) & (rx + dx >= 0) & (rx + dx < w)
        bwd = (ry - dy >= 0) & (rx - dx >= 0) & (rx - dx < w)
        flat_w = wt.ravel()
        for ok, nbr, wgt in (
            (fwd, roots + off, flat_w[roots]),
            (bwd, roots - off, flat_w[np.where(bwd, roots - off, roots)]),
        ):
            ok = ok & (wgt > 0)
            ra.append(np.arange(nroot, dtype=np.int32)[ok])
            rb.append(lab.ravel()[nbr[ok]])
            rw.append(wgt[ok])
    if nx_:  # edges of single-pixel basins, both ways
        tail = (eu >= nb - nx_) | (ev >= nb - nx_)
        ra += [eu[tail], ev[tail]]
        rb += [ev[tail], eu[tail]]
        rw += [ew[tail], ew[tail]]
    ra, rb, rw = np.concatenate(ra), np.concatenate(rb), np.concatenate(rw)
    up = (rw == vb[ra]) & ((vb[rb] > vb[ra]) | ((vb[rb] == vb[ra]) & (rb > ra)))
    np.maximum.at(sup, ra[up], rb[up])
    sup = np.where(sup < 0, np.arange(nb, dtype=np.int32), sup)
    while True:
        nxt = sup[sup]
        if np.array_equal(nxt, sup):
            break
        sup = nxt
    keep_basin = sup == np.arange(nb)
    new_id = np.cumsum(keep_basin, dtype=np.int32) - 1
    sup = new_id[sup]
    ns = int(keep_basin.sum())
    vs = vb[keep_basin]  # a tree's root is its highest basin
    simage = bimage[keep_basin]
    eu, ev = sup[eu], sup[ev]
    m = eu != ev
    eu, ev, ew = eu[m], ev[m], ew[m]
    nodes = np.where(lab >= 0, sup[np.maximum(lab, 0)], -1)

    # per-basin boxes at every level, [lmax, ns]
    r0, r1, k0, k1 = grid.lines
    t0, t1 = _tables(nodes, r0, r1, ns, h, w, lambda st: (st // w) % h)
    tr = lambda x: cv2.transpose(x.reshape(bsz * h, w))  # [w, B*h]  # noqa: E731
    c0, c1 = _tables(tr(nodes), tr(k0), tr(k1), ns, w, h, lambda st: st // (bsz * h))
    if nx_:
        # single-pixel basins: their pixel goes into the line tables
        sx = sup[nb - nx_ :]
        for tab, coord in ((t0, xy_y), (t1, xy_y - 1), (c0, xy_x), (c1, xy_x - 1)):
            even = coord % 2 == 0
            np.maximum.at(tab, (coord[even] // 2, sx[even]), xval[even])
    y0, y1 = _extents(t0, t1, lmax)
    x0, x1 = _extents(c0, c1, lmax)

    pb, pl, pr = _kruskal(vs, eu, ev, ew, lmax)
    p = (pl - 1) * ns + pb
    r = (pl - 1) * ns + pr
    ns_ = pb != pr
    rn, pn = r[ns_], p[ns_]
    x0, y0, x1, y1 = x0.ravel(), y0.ravel(), x1.ravel(), y1.ravel()  # int16
    np.minimum.at(x0, rn, x0[pn])
    np.minimum.at(y0, rn, y0[pn])
    np.maximum.at(x1, rn, x1[pn])
    np.maximum.at(y1, rn, y1[pn])
    sel = p[~ns_]
    i64 = lambda x: x[sel].astype(np.int64)  # noqa: E731
    out = Components(
        image=simage[pb[~ns_]], level=pl[~ns_], x0=i64(x0), y0=i64(y0), x1=i64(x1), y1=i64(y1)
    )
    if area:
        a2 = _area2(grid.corners, nodes, lmax, ns).ravel().astype(np.int64)
        np.add.at(a2, rn, a2[pn])
        out.area2 = a2[sel]
    if border is not None:
        by, bx = np.nonzero(border)
        corner = {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 3}
        vals = np.empty((bsz, by.size), np.uint8)
        for (py, px), k in corner.items():
            sel_ = (by % 2 == py) & (bx % 2 == px)
            vals[:, sel_] = grid.corners[k][:, by[sel_] // 2, bx[sel_] // 2]
        blk = (np.arange(bsz)[:, None] * h + by // 2) * w + bx // 2
        nd = nodes.ravel()[blk]
        hit = (vals > 0) & (nd >= 0)
        btb = np.zeros(ns, np.int64)
        np.maximum.at(btb, nd[hit], vals[hit])
        if nx_:
            on_border = border[xy_y, xy_x]
            np.maximum.at(btb, sup[nb - nx_ :][on_border], xval[on_border].astype(np.int64))
        bt_rep = np.zeros(ns * lmax, np.int64)
        np.maximum.at(bt_rep, r, btb[pb])
        out.border = bt_rep[sel]
    return out
