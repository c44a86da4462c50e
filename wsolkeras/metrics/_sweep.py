"""Connected components of every level set of a score map, in one compiled sweep.

The protocol thresholds a quantised map at up to 255 cuts and asks OpenCV for
the contours of each binary image; redoing the labelling at every cut costs
cuts x pixels. Here a few passes over the pixels build a small graph from which
the components of every level come out (``upper_sets``):

* Every row is cut into unimodal pieces ("segments": non-decreasing, then
  non-increasing). At any level l the pixels ``>= l`` of a segment form one
  run, so a segment is connected at every level where it is on, with 4- and
  with 8-connectivity.
* Every segment not holding a regional maximum links to an "uphill" segment of
  the row above or below: one touching its maximum m with a pixel ``>= m``, so
  connected to it at every level where the segment is on. The links form a
  forest (each goes up in the order (maximum, index)); each tree, a "group",
  is connected at every level below its root's maximum, and there is about
  one group per regional maximum.
* A group's box at every level comes from its maxima per row (its segments'
  tops) and per column (the first row whose maximum is ``>= l``, and so on). Only
  the levels of the cuts asked for are kept (levels are re-coded through a
  look-up table).
* Two groups touch at level l exactly when some pair of adjacent pixels across
  them is ``>= l``: the highest such level is the weight of the edge between
  them (found where segments of different groups meet: the ends of
  neighbouring segments of a row, the overlaps of segments of adjacent rows).
* The components at level l are unions of groups joined by edges of weight
  ``>= l``: a Kruskal sweep from the top level down emits, at every level, the
  box of every component and, on request, twice its bit-quad area (for the
  largest contour), or only the components holding no image-border pixel (for
  holes).

``box_ious`` applies it to a batch of score maps: it quantises them, takes the
foreground components (8-connected, ``q > k``) and holes (4-connected
components of ``q <= k`` holding no border pixel, found by the same sweep on
``k_max + 1 - q``), their boxes as OpenCV's contours give them, and the best
IoU with the ground-truth boxes at every cut. For the largest contour it
sweeps instead, with areas, the image whose holes are filled up to the cut at
which they reach the border (``fill_holes``). Everything is compiled with
numba; per-pixel loops index with unsigned integers (numba checks signed
indices for wrap-around, which stops LLVM from vectorising them).
"""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros

_JIT = {"cache": True, "nogil": True}
_U = np.uint64
_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
# bytes 0 or 1 -> bits: ((word & _LOW_BITS) * _PACK) >> 56 has byte i's bit as bit i
_LOW_BITS = np.uint64(0x0101010101010101)
_PACK = np.uint64(0x0102040810204080)
# Runs of up to _RUN pixels are handled in one fixed-width step under a mask
# (``_MASK[_RUN - n:]`` starts with n bytes 0xFF, then zeros), not in a loop of n
# steps: run lengths vary from row to row, and the branches of such loops are
# mispredicted (2-3 per run cost more than the run). Arrays read or written that
# way are padded by _RUN bytes (``Workspace``).
_RUN = 64
_MASK = np.concatenate([np.full(_RUN, 255, np.uint8), np.zeros(_RUN, np.uint8)])
# Level tables are written _LEV levels at a time (``_reach``).
_LEV = 16


class Workspace:
    """Scratch arrays for maps of ``h x w`` pixels, reused map after map: the
    segments of the foreground and background scans (``(first column, last
    column, value, first and last column at the value, first segment of each
    row)``), the group of each pixel (one byte when there are fewer than 256
    groups, else four) for the cell areas, the quantised maps and the background
    and filled images. The byte images are followed by _RUN bytes of padding,
    which the masked steps (``_max_run``) read and write past a run's end."""

    def __init__(self, h: int, w: int, batch: int = 1):
        n = h * w
        self.batch = np.zeros(batch * n + _RUN, np.uint8)[: batch * n].reshape(batch, h, w)

        def segments():
            return (
                np.empty(n, np.int32),
                np.empty(n, np.int32),
                np.empty(n, np.uint8),
                np.empty(n, np.int32),
                np.empty(n, np.int32),
                np.empty(h + 1, np.int64),
            )

        self.fg = segments()
        self.bg = segments()
        self.labels = (np.zeros(n + _RUN, np.uint8)[:n], np.empty(n, np.int32))
        self.r = np.zeros(n + _RUN, np.uint8)[:n]
        self.filled = np.zeros(n + _RUN, np.uint8)[:n]


@numba.njit(inline="always", **_JIT)
def _max_run(dst, d, src, s, n):
    """``dst[d:d + n] = max(dst[d:d + n], src[s:s + n])`` (unsigned offsets, n >= 1);
    a run of up to _RUN bytes in one masked step that rewrites the _RUN - n bytes
    after it unchanged (both arrays must have _RUN bytes after the run)."""
    if n <= _U(_RUN):
        mo = _U(_RUN) - n
        for j in range(_U(_RUN)):
            dst[d + j] = max(dst[d + j], src[s + j] & _MASK[mo + j])
    else:
        for j in range(n):
            dst[d + j] = max(dst[d + j], src[s + j])


@numba.njit(inline="always", **_JIT)
def _last_change(rise, fall, lo, hi):
    """The highest column x in lo..hi where the row changes (q[x] != q[x - 1]: bit
    x of ``rise | fall``), or -1."""
    for wj in range(hi >> 6, (lo >> 6) - 1, -1):
        m = rise[wj] | fall[wj]
        if wj == hi >> 6:
            m &= _ONES >> _U(63 - (hi & 63))
        if wj == lo >> 6:
            m &= _ONES << _U(lo & 63)
        if m != _U(0):
            return (wj << 6) + 63 - np.int64(leading_zeros(m))
    return -1


@numba.njit(inline="always", **_JIT)
def _first_change(rise, fall, lo, hi):
    """The lowest column x in lo..hi where the row changes, or -1."""
    for wj in range(lo >> 6, (hi >> 6) + 1):
        m = rise[wj] | fall[wj]
        if wj == lo >> 6:
            m &= _ONES << _U(lo & 63)
        if wj == hi >> 6:
            m &= _ONES >> _U(63 - (hi & 63))
        if m != _U(0):
            return (wj << 6) + np.int64(trailing_zeros(m))
    return -1


@numba.njit(inline="always", **_JIT)
def _rises_first(rise, fall, w):
    """Whether the row's first change is a rise."""
    x = _first_change(rise, fall, 1, w - 1)
    return x >= 0 and (rise[x >> 6] >> _U(x & 63)) & _U(1) != _U(0)


@numba.njit(**_JIT)
def scan(s, bits, q, fg, bg, quantize, want_bg):
    """Quantises one map ``s [H, W]`` (floats) as the protocol does, ``q =
    uint8(s * 255)`` (truncation), into ``q`` (flat), and cuts every row into
    segments for both sweeps (see ``Workspace`` for ``fg`` and ``bg``).

    Foreground segments are unimodal (non-decreasing, then non-increasing: a new
    one starts where the row rises after having fallen), with their maximum and
    its first and last column; background segments the other way round (a new
    one starts where the row falls after having risen, i.e. right after each
    foreground segment's top when it was reached by a rise), with their minimum.

    ``bits`` is ``s`` viewed as integers of its width: their minimum and maximum
    are returned with the segment counts, ``(nf, nb, min bits, max bits)`` (for
    non-negative floats, integer order is value order; a loop LLVM vectorises,
    unlike float minima that must mind NaN).

    With ``quantize`` False, ``q`` already holds the image (``s`` gives only the
    shape); without ``want_bg`` only the foreground segments are made.
    """
    fx0, fx1, fv, fpf, fpl, frf = fg
    bx0, bx1, bv, bpf, bpl, brf = bg
    h, w = s.shape
    uw = _U(w)
    one = _U(1)
    mn = bits[0, 0]
    mx = bits[0, 0]
    nf = 0
    nb = 0
    nwords = (w + 63) >> 6
    dirs = np.zeros(nwords * 64, np.uint8)
    dirs64 = dirs.view(np.uint64)
    rise = np.empty(nwords, np.uint64)
    fall = np.empty(nwords, np.uint64)
    start = np.empty(nwords, np.uint64)
    for y in range(h):
        frf[y] = nf
        brf[y] = nb
        base = _U(y) * uw
        row = s[y]
        row_bits = bits[y]
        if quantize:
            for x in range(uw):
                b = row_bits[x]
                mn = min(mn, b)
                mx = max(mx, b)
                q[base + x] = np.uint8(min(max(np.float64(row[x]) * 255.0, 0.0), 255.0))
        # foreground segments: a new one starts at a rise whose last change before
        # was a fall. Rises R and falls F as bit masks (bit x: column x - 1 to x),
        # 64 columns to a word; a start is a rise just above a run of non-rises
        # (M = ~R) that holds a fall, i.e. where M + F carries into a rise.
        for x in range(one, uw):
            a, p = q[base + x], q[base + x - one]
            dirs[x] = np.uint8(a > p) | (np.uint8(a < p) << np.uint8(1))
        carry = _U(0)
        for wi in range(nwords):
            r = _U(0)
            f = _U(0)
            for j in range(8):
                word = dirs64[wi * 8 + j]
                r |= (((word & _LOW_BITS) * _PACK) >> _U(56)) << _U(8 * j)
                f |= ((((word >> one) & _LOW_BITS) * _PACK) >> _U(56)) << _U(8 * j)
            rise[wi] = r
            fall[wi] = f
            m = ~r
            t = m + f
            c1 = _U(t < m)
            t2 = t + carry
            carry = c1 | _U(t2 < t)
            start[wi] = r & t2
        s0 = 0
        for wi in range(nwords + 1):
            word = start[wi] if wi < nwords else _U(1)  # a sentinel start at column nwords * 64
            while word != _U(0):
                low = word & (~word + one)
                word ^= low
                nxt = (wi << 6) + np.int64(trailing_zeros(low))
                if wi == nwords:
                    nxt = w
                if nxt == 0:
                    continue
                s1 = nxt - 1
                # top: the last rise in s0..s1 (s0 if none), then up to the first fall
                pf = s0
                for wj in range(s1 >> 6, (s0 >> 6) - 1, -1):
                    rw = rise[wj]
                    if wj == (s1 >> 6):
                        rw &= _ONES >> _U(63 - (s1 & 63))
                    if rw != _U(0):
                        pf = max(s0, (wj << 6) + 63 - np.int64(leading_zeros(rw)))
                        break
                pl = s1
                for wj in range((pf + 1) >> 6, (s1 >> 6) + 1):
                    fw = fall[wj]
                    if wj == ((pf + 1) >> 6):
                        fw &= _ONES << _U((pf + 1) & 63)
                    if fw != _U(0):
                        pl = min(s1, (wj << 6) + np.int64(trailing_zeros(fw)) - 1)
                        break
                fx0[nf], fx1[nf], fv[nf], fpf[nf], fpl[nf] = s0, s1, q[base + _U(pf)], pf, pl
                nf += 1
                s0 = nxt
                if wi == nwords:
                    break
        if not want_bg:
            continue
        # background segments: each holds one valley floor (ending right before a
        # foreground split) or a monotone end of the row
        f0 = frf[y]
        b_start = 0
        valley = -1  # last column of the valley floor in the current bg segment
        for i in range(f0, nf + 1):
            if i < nf:
                if i > f0:
                    valley = np.int64(fx0[i]) - 1
                rose = i > f0 or fpf[i] > 0
                if not (rose and fpl[i] < fx1[i]):
                    continue  # no fall after a rise to this top: no bg split
                cut = np.int64(fpl[i]) + 1
            else:
                cut = w
            end = cut - 1
            if valley >= b_start:  # the floor: the run of equal values up to the valley
                last = valley
                first = max(_last_change(rise, fall, b_start + 1, last), b_start)
            elif b_start == 0 and _rises_first(rise, fall, w):  # its first run is the floor
                first = 0
                x = _first_change(rise, fall, 1, end)
                last = x - 1 if x >= 0 else end
            else:
                last = end
                first = max(_last_change(rise, fall, b_start + 1, last), b_start)
            bx0[nb], bx1[nb], bv[nb], bpf[nb], bpl[nb] = (
                b_start,
                end,
                q[base + _U(last)],
                first,
                last,
            )
            nb += 1
            b_start = cut
            valley = -1
    frf[h] = nf
    brf[h] = nb
    return nf, nb, mn, mx


@numba.njit(**_JIT)
def _float_stats(s):
    """Minimum, maximum and whether all values are finite, value by value."""
    mn = s[0, 0]
    mx = s[0, 0]
    finite = True
    for y in range(s.shape[0]):
        for x in range(s.shape[1]):
            a = s[y, x]
            if not np.isfinite(a):
                finite = False
            mn = min(mn, a)
            mx = max(mx, a)
    return np.float64(mn), np.float64(mx), finite


@numba.njit(**_JIT)
def _find(parent, a):
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@numba.njit(**_JIT)
def _groups(v, h, w, d, sx0, sx1, sv, spf, spl, row_first, ns):
    """Links every segment to an uphill segment (see the module docstring) and
    labels the trees. Returns the group of each segment (-1: never on), the
    number of groups and their maxima.

    The uphill segment of s is looked for next to its top plateau in the rows
    above and below (first right above and below its first top pixel): a link
    s -> t needs a pixel >= m (s's maximum) of t touching a pixel of s at m, and
    (max(t), t) > (m, s) so that links never cycle. A tree
    whose root touches another tree's pixel at the root's maximum (a plateau cut
    into several segments) is then merged into it: the union is still connected
    at every level below its maximum.
    """
    up = np.full(ns, -1, np.int64)
    peer = np.full(ns, -1, np.int64)
    uw = _U(w)
    ud = _U(d)
    for y in range(h):
        # segments of the rows above and below, followed along with s: ta, tb
        # for the search, qa, qb those holding the column of s's first top pixel
        above, below = y > 0, y + 1 < h
        ta = qa = row_first[y - 1] if above else 0
        tb = qb = row_first[y + 1] if below else 0
        pa = _U(y - 1) * uw if above else _U(0)
        pb = _U(y + 1) * uw if below else _U(0)
        for s in range(row_first[y], row_first[y + 1]):
            m = sv[s]
            if m == 0:
                continue
            # First the pixels right above and below s's first top pixel (enough
            # for nine segments in ten of a smooth map; the search's branches on
            # the values are mispredicted several times per segment): the one
            # above links if its segment is higher (it comes before s), the one
            # below if it is as high (it comes after).
            x = spf[s]
            oka = okb = False
            if above:
                qa += np.int64(sx1[qa] < x)
                while sx1[qa] < x:
                    qa += 1
                oka = (v[pa + _U(x)] >= m) & (sv[qa] > m)
            if below:
                qb += np.int64(sx1[qb] < x)
                while sx1[qb] < x:
                    qb += 1
                okb = v[pb + _U(x)] >= m
            found = qa if oka else (qb if okb else -1)
            if found >= 0:
                up[s] = found
                continue
            pf, pl = _U(spf[s]), _U(spl[s])
            lo = pf - ud if pf >= ud else _U(0)
            hi = min(pl + ud, uw - _U(1))
            for k in range(2):
                yy = y - 1 + 2 * k
                if yy < 0 or yy >= h:
                    continue
                t = ta if k == 0 else tb
                while sx1[t] < np.int64(lo):
                    t += 1
                if k == 0:
                    ta = t
                else:
                    tb = t
                # the segments u of row yy over columns lo..hi, left to right; u
                # is unimodal, so its highest pixel there is its top, or the
                # column of the range nearest to its top
                base = _U(yy) * uw
                u = t
                u_end = row_first[yy + 1]
                while u < u_end and sx0[u] <= np.int64(hi):
                    if spl[u] < np.int64(lo):
                        a = v[base + lo]
                    elif spf[u] > np.int64(hi):
                        a = v[base + hi]
                    else:
                        a = sv[u]
                    if a >= m:
                        if sv[u] > m or u > s:
                            found = u
                            break
                        peer[s] = u
                    u += 1
                if found >= 0:
                    break
            up[s] = found
    # the trees, labelled from the top down: segments by decreasing (maximum,
    # index), so that each one's uphill segment is labelled before it (walking
    # up the links from each segment instead branches on their lengths)
    grp = np.full(ns, -1, np.int64)
    root_of = np.empty(ns, np.int64)
    ntree = 0
    for s in _by_decreasing(sv[:ns], 255):
        if sv[s] == 0:
            break  # never on
        if up[s] >= 0:
            grp[s] = grp[up[s]]
        else:
            grp[s] = ntree
            root_of[ntree] = s
            ntree += 1
    # trees meeting at a plateau at the top of one of them
    uf = np.arange(ntree, dtype=np.int64)
    for tr in range(ntree):
        t = peer[root_of[tr]]
        if t >= 0:
            ra, rb = _find(uf, tr), _find(uf, grp[t])
            if ra != rb:
                uf[max(ra, rb)] = min(ra, rb)
    gid = np.full(ntree, -1, np.int64)  # tree -> group
    ng = 0
    for tr in range(ntree):  # a tree's root in uf comes first (lower index)
        r = _find(uf, tr)
        if r == tr:
            gid[tr] = ng
            ng += 1
        else:
            gid[tr] = gid[r]
    gmax = np.zeros(ng, np.int64)
    for s in range(ns):
        g = grp[s]
        if g >= 0:
            g = gid[g]
            grp[s] = g
            gmax[g] = max(gmax[g], np.int64(sv[s]))
    return grp, ng, gmax


@numba.njit(inline="always", **_JIT)
def _reach(m, mb, i0, step, n, lut, base, peak, out, o):
    """For every level j in base + 1 .. peak, the first index i of i0, i0 + step,
    ... (n of them) with ``lut[m[mb + i]] >= j`` into ``out[o + j]`` (``m``: a
    group's row or column maxima, whose peak is reached).

    The _LEV levels above the running top are written at every index, in one
    fixed-width store and with no branch on the values: they are rewritten at
    the index where the top rises past them, or lie past the group's part of
    ``out`` (the next group's, written later, or _LEV entries of padding)."""
    top = base
    for k in range(n):
        i = i0 + k * step
        c = np.int64(lut[m[mb + _U(i)]])
        b = _U(o + top + 1)
        for j in range(_U(_LEV)):
            out[b + j] = i
        if c - top > _LEV:
            for lev in range(top + _LEV + 1, c + 1):
                out[o + lev] = i
        top = max(top, c)
        if top == peak:
            break


@numba.njit(**_JIT)
def _group_tables(
    v, h, w, diag, lut, sx0, sx1, sv, row_first, grp, ng, gmax, base, off, want_boxes
):
    """One pass over the segments for the groups' boxes and the edges between them.

    Boxes (with ``want_boxes``): per group and level j > ``base[g]`` (index
    ``off[g] + j - base[g] - 1``), the first and last row and column holding a
    pixel of level ``lut[value] >= j``, from the group's maxima per row (its
    segments' tops) and per column, each written with a byte store or one
    masked step per segment (no branch that depends on the values).

    Edges: the highest level at which two groups touch, from the segments: the
    left-right neighbours across groups are the ends of consecutive segments of
    a row, and the up-down (and diagonal) ones lie where a segment overlaps a
    segment of the next row in another group; only those overlaps are scanned.
    With up to 255 groups (the usual case) each pair keeps its best weight in a
    table; with more, every touching pair of segments is listed (repeats do no
    harm to the sweep).

    Returns ``(gy0, gy1, gx0, gx1, ea, eb, ew)``, the edges ``(g1, g2, level)``
    sorted by decreasing level.
    """
    tot = off[ng] + _LEV if want_boxes else 0  # padded for _reach
    gy0 = np.empty(tot, np.int32)
    gy1 = np.empty(tot, np.int32)
    gx0 = np.empty(tot, np.int32)
    gx1 = np.empty(tot, np.int32)
    uw = _U(w)
    one = _U(1)
    d = 1 if diag else 0
    small = ng < 256
    stride = ng + 1 if small else 0
    pair = np.zeros(stride * stride, np.uint8)
    cap = 0 if small else 5 * row_first[h] + 8
    la = np.empty(cap, np.int64)
    lb = np.empty(cap, np.int64)
    lw = np.empty(cap, np.uint8)
    nl = 0
    uh = _U(h)
    colmax = np.zeros(ng * w + _RUN if want_boxes else 0, np.uint8)
    rowmax = np.zeros(ng * h if want_boxes else 0, np.uint8)
    gxa = np.full(ng, w, np.int64)
    gxb = np.full(ng, -1, np.int64)
    gya = np.full(ng, h, np.int64)
    gyb = np.full(ng, -1, np.int64)
    for y in range(h):
        b0 = _U(y) * uw
        b1 = b0 + uw
        r0, r1 = row_first[y], row_first[y + 1]
        t = r1
        t_end = row_first[y + 2] if y + 1 < h else r1
        for s in range(r0, r1):
            ga = grp[s]
            if ga < 0:
                continue
            s0, s1 = np.int64(sx0[s]), np.int64(sx1[s])
            if want_boxes and base[ga] < gmax[ga]:  # a table to fill
                k = _U(ga) * uh + _U(y)
                rowmax[k] = max(rowmax[k], sv[s])
                gya[ga] = min(gya[ga], y)
                gyb[ga] = max(gyb[ga], y)
                gxa[ga] = min(gxa[ga], s0)
                gxb[ga] = max(gxb[ga], s1)
                _max_run(colmax, _U(ga) * uw + _U(s0), v, b0 + _U(s0), _U(s1 - s0 + 1))
            # neighbours across groups: the next segment of the row, then the
            # segments u of the next row within a column of s
            gb = grp[s + 1] if s + 1 < r1 else -1
            if gb != ga and gb >= 0:
                x = b0 + _U(s1)
                wt = min(v[x], v[x + one])
                if small:
                    k = min(ga, gb) * stride + max(ga, gb)
                    pair[k] = max(pair[k], wt)
                elif wt != 0:
                    la[nl], lb[nl], lw[nl] = ga, gb, wt
                    nl += 1
            if t == t_end:
                continue
            while sx1[t] < s0 - d:
                t += 1
            u = t
            while u < t_end and sx0[u] <= s1 + d:
                gb = grp[u]
                if gb != ga and gb >= 0:
                    t0, t1 = np.int64(sx0[u]), np.int64(sx1[u])
                    wt = np.uint8(0)
                    for x in range(_U(max(s0, t0)), _U(min(s1, t1) + 1)):
                        wt = max(wt, min(v[b0 + x], v[b1 + x]))
                    if diag:
                        # (y, x) with (y + 1, x + 1), then with (y + 1, x - 1)
                        for x in range(_U(max(s0, t0 - 1)), _U(min(s1, t1 - 1) + 1)):
                            wt = max(wt, min(v[b0 + x], v[b1 + x + one]))
                        for x in range(_U(max(s0, t0 + 1)), _U(min(s1, t1 + 1) + 1)):
                            wt = max(wt, min(v[b0 + x], v[b1 + x - one]))
                    if small:
                        k = min(ga, gb) * stride + max(ga, gb)
                        pair[k] = max(pair[k], wt)
                    elif wt != 0:
                        la[nl], lb[nl], lw[nl] = ga, gb, wt
                        nl += 1
                u += 1
    if want_boxes:
        # first (last) row and column reaching each level, scanning from the top
        # (bottom) and left (right) up to the group's top level
        for g in range(ng):
            o = off[g] - base[g] - 1
            if base[g] < gmax[g]:
                b, p = base[g], gmax[g]
                n = gyb[g] - gya[g] + 1
                _reach(rowmax, _U(g) * uh, gya[g], 1, n, lut, b, p, gy0, o)
                _reach(rowmax, _U(g) * uh, gyb[g], -1, n, lut, b, p, gy1, o)
                n = gxb[g] - gxa[g] + 1
                _reach(colmax, _U(g) * uw, gxa[g], 1, n, lut, b, p, gx0, o)
                _reach(colmax, _U(g) * uw, gxb[g], -1, n, lut, b, p, gx1, o)
    if small:
        for a in range(ng):
            for b in range(a + 1, ng):
                if pair[a * stride + b] != 0:
                    nl += 1
        la = np.empty(nl, np.int64)
        lb = np.empty(nl, np.int64)
        lw = np.empty(nl, np.uint8)
        nl = 0
        for a in range(ng):
            for b in range(a + 1, ng):
                wt = pair[a * stride + b]
                if wt != 0:
                    la[nl], lb[nl], lw[nl] = a, b, wt
                    nl += 1
    # levels, by decreasing level (counting sort)
    pos = np.zeros(257, np.int64)
    for e in range(nl):
        pos[256 - np.int64(lut[lw[e]])] += 1
    for i in range(1, 257):
        pos[i] += pos[i - 1]
    ea = np.empty(nl, np.int64)
    eb = np.empty(nl, np.int64)
    ew = np.empty(nl, np.int64)
    for e in range(nl):
        lev = np.int64(lut[lw[e]])
        j = pos[255 - lev]
        pos[255 - lev] += 1
        ea[j] = la[e]
        eb[j] = lb[e]
        ew[j] = lev
    return gy0, gy1, gx0, gx1, ea, eb, ew


@numba.njit(**_JIT)
def _group_areas(v, h, w, lut, lab, off, out):
    """Twice the bit-quad area of each group's pixels of level ``lut[value] >= j``,
    at every level j (``out[off[g] + j - 1]``).

    A 2x2 cell of pixels with 4 corners on adds 2 (halves), with 3 corners 1:
    its two lowest corners s1 <= s2 make it add 1 at levels <= s2 and 1 more at
    levels <= s1. All on corners of such a cell are 8-connected, so the cell
    belongs to the component of the higher of its two top pixels (on whenever
    the cell counts: it is at least the second lowest corner). Each row of cells
    is first reduced to (s1, s2, owner) in a loop LLVM vectorises, then counted
    (s1 and s2 in separate tables, so that the two counts never wait for each
    other).
    """
    uw = _U(w)
    one = _U(1)
    ng = off.size - 1
    # events per group (slot ng for cells without an on pixel) and value
    size = _U((ng + 1) * 256)
    hist = np.zeros(2 * (ng + 1) * 256, np.int32)
    s1 = np.empty(w, np.uint8)
    s2 = np.empty(w, np.uint8)
    owner = np.empty(w, lab.dtype)
    owner[w - 1] = ng  # a cell past the row's end, counted in the unused slot ng
    s1[w - 1] = 0
    s2[w - 1] = 0
    for y in range(h - 1):
        p0 = _U(y) * uw
        p1 = p0 + uw
        for x in range(uw - one):
            a, b = v[p0 + x], v[p0 + x + one]
            c, d = v[p1 + x], v[p1 + x + one]
            lo1, hi1 = min(a, b), max(a, b)
            lo2, hi2 = min(c, d), max(c, d)
            s2[x] = min(max(lo1, lo2), min(hi1, hi2))
            s1[x] = min(lo1, lo2)
            la, lb = lab[p0 + x], lab[p0 + x + one]  # both loaded: a select, no branch
            owner[x] = la if a >= b else lb
        # the two halves of the row in turn: neighbouring cells often count in the
        # same entry, and each increment of an entry waits for the one before
        half = uw >> one
        for i in range(half):
            for x in (i, i + half):
                o = _U(owner[x]) << _U(8)
                hist[o + _U(s1[x])] += 1
                hist[size + o + _U(s2[x])] += 1
    # events at a value count at every level up to the value's: suffix sums, from
    # the group's top level (vhi[j]: the highest value of level <= j)
    vhi = np.zeros(np.int64(lut[255]) + 1, np.int64)
    for val in range(256):
        vhi[lut[val]] = val
    for g in range(ng):
        acc = 0
        top = off[g + 1] - off[g]  # the group's top level
        val = vhi[top]
        for j in range(top, 0, -1):
            while val > vhi[j - 1]:
                k = _U(g * 256 + val)
                acc += hist[k] + hist[size + k]
                val -= 1
            out[off[g] + j - 1] = acc


@numba.njit(**_JIT)
def _by_decreasing(key, nlev):
    """The indices of ``key`` (levels 0 .. nlev) by decreasing (level, index) (a
    counting sort)."""
    pos = np.zeros(nlev + 2, np.int64)
    for g in range(key.size):
        pos[nlev - np.int64(key[g]) + 1] += 1
    for i in range(1, nlev + 2):
        pos[i] += pos[i - 1]
    order = np.empty(key.size, np.int64)
    for g in range(key.size - 1, -1, -1):
        i = nlev - np.int64(key[g])
        order[pos[i]] = g
        pos[i] += 1
    return order


@numba.njit(**_JIT)
def _sweep_levels(nlev, ng, gmax, base, off, ea, eb, ew, gx0, gy0, gx1, gy1, gaux, aux_kind):
    """Kruskal sweep from the top level down over the edges between groups,
    emitting every component at every level 1 .. nlev (see ``upper_sets``).

    When two components meet at level wt, the one with the higher maximum
    absorbs the other's tables at levels <= wt (its own levels above wt stay its
    own), so the work per level is one record per component. Group g's tables
    hold levels ``base[g] + 1 ..``; with ``aux_kind`` 2 (holes only) ``base`` is
    the level down from which the group holds a border pixel, and a component's
    is the highest of its groups'.
    """
    gbrd = base.copy()
    ne = ea.size
    gorder = _by_decreasing(gmax, nlev)
    cap_r = 0
    for g in range(ng):
        cap_r += gmax[g] - base[g]
    r_x0 = np.empty(cap_r, np.int32)
    r_y0 = np.empty(cap_r, np.int32)
    r_x1 = np.empty(cap_r, np.int32)
    r_y1 = np.empty(cap_r, np.int32)
    r_aux = np.empty(cap_r, np.int64)
    level_start = np.zeros(nlev + 2, np.int64)
    uf = np.arange(ng, dtype=np.int64)
    alive = np.empty(ng, np.int64)  # roots of the components (lazily cleaned)
    nalive = 0
    nr = 0
    na = 0
    ei = 0
    for lev in range(nlev, 0, -1):
        level_start[lev + 1] = nr
        while na < ng and gmax[gorder[na]] >= lev:
            alive[nalive] = gorder[na]
            nalive += 1
            na += 1
        while ei < ne and ew[ei] >= lev:
            ra, rb = _find(uf, ea[ei]), _find(uf, eb[ei])
            wt = ew[ei]
            ei += 1
            if ra == rb:
                continue
            if gmax[rb] > gmax[ra] or (gmax[rb] == gmax[ra] and rb < ra):
                ra, rb = rb, ra
            uf[rb] = ra  # ra absorbs rb
            if aux_kind == 2:
                gbrd[ra] = max(gbrd[ra], gbrd[rb])
                if gbrd[ra] >= wt:
                    continue  # touches the border at every level from here down
            # levels lo + 1 .. wt of both tables
            lo = gbrd[ra] if aux_kind == 2 else 0
            oa = _U(off[ra] + lo - base[ra])
            ob = _U(off[rb] + lo - base[rb])
            for i in range(_U(wt - lo)):
                gx0[oa + i] = min(gx0[oa + i], gx0[ob + i])
                gy0[oa + i] = min(gy0[oa + i], gy0[ob + i])
                gx1[oa + i] = max(gx1[oa + i], gx1[ob + i])
                gy1[oa + i] = max(gy1[oa + i], gy1[ob + i])
            if aux_kind == 1:
                for i in range(_U(wt)):
                    gaux[oa + i] += gaux[ob + i]
        j = 0
        for i in range(nalive):
            g = alive[i]
            if uf[g] != g:
                continue
            if aux_kind == 2 and gbrd[g] >= lev:
                continue  # holds a border pixel at this level and below: never a hole
            alive[j] = g
            j += 1
            k = off[g] + lev - base[g] - 1
            r_x0[nr] = gx0[k]
            r_y0[nr] = gy0[k]
            r_x1[nr] = gx1[k]
            r_y1[nr] = gy1[k]
            r_aux[nr] = gaux[k] if aux_kind == 1 else 0
            nr += 1
        nalive = j
    level_start[1] = nr
    level_start[0] = nr
    return r_x0[:nr], r_y0[:nr], r_x1[:nr], r_y1[:nr], r_aux[:nr], level_start


@numba.njit(**_JIT)
def _fill_labels(h, w, sx0, sx1, row_first, grp, ng, lab):
    """The group of every pixel (``ng`` where there is none) into ``lab``."""
    uw = _U(w)
    wide = lab.itemsize > 1
    for y in range(h):
        base_px = _U(y) * uw
        for s in range(row_first[y], row_first[y + 1]):
            g = grp[s]
            gl = lab.dtype.type(g if g >= 0 else ng)
            x0 = base_px + _U(sx0[s])
            n = _U(sx1[s] - sx0[s] + 1)
            if n <= _U(_RUN) and not wide:
                # a fixed-width store: the bytes past the run belong to the runs
                # written next (or to the padding)
                for j in range(_U(_RUN)):
                    lab[x0 + j] = gl
            else:
                for j in range(n):
                    lab[x0 + j] = gl


@numba.njit(**_JIT)
def _group_graph(v, h, w, conn, lut, want_border, segs, ns):
    """The groups of ``v`` (see ``upper_sets``): ``(grp, ng, gmax, base)``, each
    segment's group, the number of groups, each one's top level and the level
    ``base`` down from which it holds a pixel of the image border (with
    ``want_border``, else 0)."""
    sx0, sx1, sv, spf, spl, row_first = segs
    d = 1 if conn == 8 else 0
    grp, ng, gmax = _groups(v, h, w, d, sx0, sx1, sv, spf, spl, row_first, ns)
    for g in range(ng):
        gmax[g] = lut[gmax[g]]
    base = np.zeros(ng, np.int64)
    if want_border:  # the segments of the first and last rows, the ends of the others
        for y in range(h):
            a, b = row_first[y], row_first[y + 1]
            step = 1 if y == 0 or y == h - 1 else max(b - 1 - a, 1)
            for s in range(a, b, step):
                g = grp[s]
                if g < 0:
                    continue
                if y == 0 or y == h - 1:
                    bv = sv[s]
                else:
                    bv = np.uint8(0)
                    if sx0[s] == 0:
                        bv = v[y * w]
                    if sx1[s] == w - 1:
                        bv = max(bv, v[y * w + w - 1])
                base[g] = min(max(base[g], np.int64(lut[bv])), gmax[g])
    return grp, ng, gmax, base


@numba.njit(**_JIT)
def upper_sets(v, h, w, conn, lut, want_area, want_border, segs, ns, labels):
    """Components of the pixels of level ``lut[v] >= j`` (``v`` flat ``h * w``
    uint8, ``lut`` a non-decreasing map of values to levels 0 .. J) at every
    level j = 1 .. J, with 4- or 8-connectivity (``conn``). ``segs`` holds the
    ``ns`` unimodal segments of ``v`` (from ``scan``), ``labels`` is
    ``Workspace.labels``. The levels are the cuts asked for: tables per level
    hold only those.

    Returns ``(x0, y0, x1, y1, aux, level_start)``: one record per (level,
    component), levels in decreasing order; the records of level j are
    ``level_start[j + 1] : level_start[j]``. ``aux`` is twice the bit-quad area
    of the component's pixels (``want_area``), or 0. With ``want_border`` only
    the components holding no pixel of the image border (the holes, when ``v``
    is the background) are returned.
    """
    sx0, sx1, sv, spf, spl, row_first = segs
    lab8, lab32 = labels
    nlev = np.int64(lut[255])
    grp, ng, gmax, base = _group_graph(v, h, w, conn, lut, want_border, segs, ns)
    # the group's tables hold levels base[g] + 1 .. gmax[g]: with ``want_border``,
    # levels where the group holds a border pixel are left out (its component is
    # never a hole there)
    off = np.empty(ng + 1, np.int64)
    off[0] = 0
    for g in range(ng):
        off[g + 1] = off[g] + gmax[g] - base[g]
    gy0, gy1, gx0, gx1, ea, eb, ew = _group_tables(
        v, h, w, conn == 8, lut, sx0, sx1, sv, row_first, grp, ng, gmax, base, off, True
    )
    gaux = np.zeros(off[ng] if want_area else 0, np.int64)
    if want_area:  # per-pixel group labels, one byte each when they fit
        if ng < 256:
            _fill_labels(h, w, sx0, sx1, row_first, grp, ng, lab8)
            _group_areas(v, h, w, lut, lab8, off, gaux)
        else:
            _fill_labels(h, w, sx0, sx1, row_first, grp, ng, lab32)
            _group_areas(v, h, w, lut, lab32, off, gaux)
    aux_kind = 1 if want_area else (2 if want_border else 0)
    return _sweep_levels(nlev, ng, gmax, base, off, ea, eb, ew, gx0, gy0, gx1, gy1, gaux, aux_kind)


@numba.njit(**_JIT)
def _touch_levels(ng, base, ea, eb, ew, nlev):
    """For each group, the highest level at which its component holds a pixel of
    the image border (0: at no level): a Kruskal sweep from the top level down,
    each component keeping the highest ``base`` of its groups and a list of its
    groups not yet reached, emptied (at the current level) as soon as it holds a
    border pixel: when a merge brings one, or when the level comes down to it."""
    uf = np.arange(ng, dtype=np.int64)
    mb = base.copy()
    touch = np.zeros(ng, np.int64)
    head = np.arange(ng, dtype=np.int64)  # lists of groups not reached, by root
    tail = np.arange(ng, dtype=np.int64)
    nxt = np.full(ng, -1, np.int64)
    order = _by_decreasing(base, nlev)
    ei = 0
    bi = 0
    for lev in range(nlev, 0, -1):
        while ei < ea.size and ew[ei] >= lev:
            ra, rb = _find(uf, ea[ei]), _find(uf, eb[ei])
            ei += 1
            if ra == rb:
                continue
            uf[rb] = ra
            mb[ra] = max(mb[ra], mb[rb])
            if head[rb] >= 0:  # ra's list, then rb's
                if head[ra] < 0:
                    head[ra] = head[rb]
                else:
                    nxt[tail[ra]] = head[rb]
                tail[ra] = tail[rb]
            if mb[ra] >= lev:
                g = head[ra]
                while g >= 0:
                    touch[g] = lev
                    g = nxt[g]
                head[ra] = -1
        while bi < ng and base[order[bi]] >= lev:
            r = _find(uf, order[bi])
            bi += 1
            g = head[r]
            while g >= 0:
                touch[g] = lev
                g = nxt[g]
            head[r] = -1
    return touch


@numba.njit(**_JIT)
def fill_holes(q, r, h, w, lut_bg, cuts, bg, nb, out):
    """``out = max(q, the first cut at which the pixel's background component
    reaches the image border)``, exact at the cuts asked for (``cuts``, in
    increasing order): at each of them, ``out > cut`` is the foreground with its
    holes filled (the complement of the background components that hold a
    border pixel). ``r`` and ``bg`` are the background image and its segments
    (see ``box_ious``), ``lut_bg`` its levels.

    A background group is connected at every level where a pixel of it is on,
    so a pixel's component at any cut is its group's."""
    sx0, sx1, sv, _, _, row_first = bg
    grp, ng, gmax, base = _group_graph(r, h, w, 4, lut_bg, True, bg, nb)
    no_tables = np.zeros(ng + 1, np.int64)
    ea, eb, ew = _group_tables(
        r, h, w, False, lut_bg, sx0, sx1, sv, row_first, grp, ng, gmax, base, no_tables, False
    )[4:]
    ncut = cuts.size
    touch = _touch_levels(ng, base, ea, eb, ew, np.int64(lut_bg[255]))
    top = np.uint8(cuts[ncut - 1] + 1)  # no border at any cut asked for
    opens = np.empty(ng, np.uint8)
    for g in range(ng):  # background level j is the cut ncut - j (from 0)
        opens[g] = np.uint8(cuts[ncut - touch[g]]) if touch[g] > 0 else top
    uw = _U(w)
    for p in range(_U(h) * uw):  # (a loop: numba's out[:] = q copies 20x slower)
        out[p] = q[p]
    for y in range(h):
        base_px = _U(y) * uw
        for s in range(row_first[y], row_first[y + 1]):
            g = grp[s]
            if g < 0:
                continue
            t = opens[g]
            if np.int64(t) + np.int64(sv[s]) <= np.int64(top):  # not above the minimum
                continue
            x0 = base_px + _U(sx0[s])
            n = _U(sx1[s] - sx0[s] + 1)
            if n <= _U(_RUN):
                mo = _U(_RUN) - n
                for j in range(_U(_RUN)):
                    out[x0 + j] = max(out[x0 + j], t & _MASK[mo + j])
            else:
                for j in range(n):
                    out[x0 + j] = max(out[x0 + j], t)


@numba.njit(**_JIT)
def best_iou(x0, y0, x1, y1, gt, g0, g1):
    """Best inclusive-pixel IoU of box (x0, y0, x1, y1) with ``gt[g0:g1]``."""
    best = 0.0
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    for j in range(g0, g1):
        iw = min(x1, gt[j, 2]) - max(x0, gt[j, 0]) + 1
        ih = min(y1, gt[j, 3]) - max(y0, gt[j, 1]) + 1
        inter = max(iw, 0) * max(ih, 0)
        union = area + (gt[j, 2] - gt[j, 0] + 1) * (gt[j, 3] - gt[j, 1] + 1) - inter
        if union > 0:
            best = max(best, inter / union)
    return best


@numba.njit(**_JIT)
def box_ious(
    maps,
    bits,
    gt,
    gt_first,
    need_tab,
    multi_contour,
    iou_k,
    amb,
    stats,
    q,
    fg,
    bg,
    labels,
    r,
    filled,
):
    """The protocol's best IoU at every cut, for a batch of score maps.

    Args:
      maps: ``[B, H, W]`` floats (C-contiguous); ``bits``: the same memory
        viewed as integers of the same width.
      gt, gt_first: ``gt[gt_first[i]:gt_first[i + 1]]`` are map i's int64
        ground-truth boxes.
      need_tab: ``need_tab[m, k]``: cut k is used when ``max(q) = m``.
      multi_contour: every contour (MaxBoxAccV2) or the largest one.
      iou_k: ``[B, 256]`` out: ``iou_k[i, k]`` best IoU of map i at cut k (for
        the cuts asked for).
      amb: ``[B * 256, 2]`` out: (map, cut) where two contours tie for the
        largest area and their components start on the same row (left at -1 in
        ``iou_k``: OpenCV's order decides); the count is returned.
      stats: ``[B, 4]`` out: each map's minimum, maximum, whether it is all
        finite, and the maximum of its quantised values. Maps with a non-finite
        value and constant maps are evaluated as zeros (as the protocol's
        normalisation makes them).
      q: ``[B, H, W]`` uint8 out: the quantised maps (zeros for those).
      fg, bg, labels, r, filled: scratch (``Workspace``).
    """
    bsz, h, w = maps.shape
    n = h * w
    namb = 0
    cuts = np.empty(256, np.int64)
    for i in range(bsz):
        v = q[i].ravel()
        nf, nb, mnb, mxb = scan(maps[i], bits[i], v, fg, bg, True, True)
        if mnb < 0:  # a value with the sign bit set: look at the values themselves
            mn, mx, finite = _float_stats(maps[i])
        else:  # all non-negative: +inf and NaN sort after every finite value
            bits_one = bits[i, 0, :1].copy()
            bits_one[0] = mnb
            mn = np.float64(bits_one.view(maps.dtype)[0])
            bits_one[0] = mxb
            mx = np.float64(bits_one.view(maps.dtype)[0])
            finite = np.isfinite(mx)
        stats[i, 0] = mn
        stats[i, 1] = mx
        stats[i, 2] = 1.0 if finite else 0.0
        qmax = 0
        if finite and mn != mx:
            for j in range(nf):
                qmax = max(qmax, np.int64(fg[2][j]))
        stats[i, 3] = qmax
        g0, g1 = gt_first[i], gt_first[i + 1]
        if qmax == 0:  # no contour at any cut: the box is (0, 0, 0, 0)
            for p in range(n):
                v[p] = 0
            iou_k[i, 0] = best_iou(0, 0, 0, 0, gt, g0, g1)
            continue
        need_k = need_tab[qmax]
        kmax = 0
        for k in range(qmax):
            if need_k[k]:
                kmax = k
        top = np.uint8(kmax + 1)
        # levels of the sweeps: the j-th cut asked for, in increasing order, is level
        # j of the foreground (q > k: lut_fg[q] >= j) and the level of r = kmax + 1 - q
        # (0 where q > kmax) numbered from the other end for the background (q <= k)
        lut_fg = np.zeros(256, np.uint8)
        lut_bg = np.zeros(256, np.uint8)
        for val in range(1, 256):
            lut_fg[val] = lut_fg[val - 1] + (1 if val <= kmax + 1 and need_k[val - 1] else 0)
            lut_bg[val] = lut_bg[val - 1] + (1 if val <= kmax + 1 and need_k[kmax + 1 - val] else 0)
        for p in range(n):
            a = v[p]
            r[p] = top - a if a < top else 0
        bval = bg[2]
        for j in range(nb):
            a = bval[j]  # the segment's minimum of q: its maximum of r
            bval[j] = top - a if a < top else 0
        ncut = 0  # the cuts asked for, in increasing order
        for k in range(kmax + 1):
            if need_k[k]:
                cuts[ncut] = k
                ncut += 1
        if multi_contour:
            f_x0, f_y0, f_x1, f_y1, _, f_start = upper_sets(
                v, h, w, 8, lut_fg, False, False, fg, nf, labels
            )
            b_x0, b_y0, b_x1, b_y1, _, b_start = upper_sets(
                r, h, w, 4, lut_bg, False, True, bg, nb, labels
            )
            for k in cuts[:ncut]:
                lf = np.int64(lut_fg[k + 1])
                lb = np.int64(lut_bg[kmax + 1 - k])
                best = 0.0
                for j in range(f_start[lf + 1], f_start[lf]):
                    x1 = min(f_x1[j] + 1, w - 1)
                    y1 = min(f_y1[j] + 1, h - 1)
                    best = max(best, best_iou(f_x0[j], f_y0[j], x1, y1, gt, g0, g1))
                for j in range(b_start[lb + 1], b_start[lb]):  # holes
                    x1 = min(b_x1[j] + 2, w - 1)
                    y1 = min(b_y1[j] + 2, h - 1)
                    best = max(best, best_iou(b_x0[j] - 1, b_y0[j] - 1, x1, y1, gt, g0, g1))
                iou_k[i, k] = best
            continue
        # The largest contour: an outer one (a hole's contour is smaller than its
        # parent's, which OpenCV lists first), whose contourArea is the bit-quad
        # area of its component with the holes filled: the components of the
        # filled image, at each cut, and their areas.
        fill_holes(v, r, h, w, lut_bg, cuts[:ncut], bg, nb, filled)
        nf = scan(maps[i], bits[i], filled, fg, bg, False, False)[0]
        f_x0, f_y0, f_x1, f_y1, f_aux, f_start = upper_sets(
            filled, h, w, 8, lut_fg, True, False, fg, nf, labels
        )
        for k in cuts[:ncut]:
            lf = np.int64(lut_fg[k + 1])
            fa, fb = f_start[lf + 1], f_start[lf]
            # the largest; on equal areas, the one OpenCV lists first: the one its
            # raster scan finds last, i.e. whose first pixel (in its top row) comes
            # last; top rows tie too: OpenCV decides
            jb = fa
            tie = False
            for j in range(fa + 1, fb):
                if f_aux[j] > f_aux[jb] or (f_aux[j] == f_aux[jb] and f_y0[j] > f_y0[jb]):
                    jb = j
                    tie = False
                elif f_aux[j] == f_aux[jb] and f_y0[j] == f_y0[jb]:
                    tie = True
            if tie:
                iou_k[i, k] = -1.0
                amb[namb, 0] = i
                amb[namb, 1] = k
                namb += 1
            else:
                x1 = min(f_x1[jb] + 1, w - 1)
                y1 = min(f_y1[jb] + 1, h - 1)
                iou_k[i, k] = best_iou(f_x0[jb], f_y0[jb], x1, y1, gt, g0, g1)
    return namb
