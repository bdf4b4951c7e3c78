# Where a network's parameters and a batch's buffers live (built once, in _network.pyx).
#
# Parameters, layer by layer: W_l (n_l × n_{l+1}, row-major), then b_l (n_{l+1},). The gradient
# and the optimizer state have the same layout.
#
# Workspace, for a capacity of cap rows: every buffer is cap rows of its own width, so a buffer
# whose column offset is c starts at cap × c. Buffers (the gathered input has
# buffers of its own, step.pxd: a wide sparse input would not fit cap rows of n_0): per layer its
# output a, its pre-activation z (GELU only, else z is a), its dropped-out output o (dropout
# only, else o is a); two deltas of the widest layer, ping-ponged by the backward pass; the
# gathered dense targets (n_L); the gathered sample weights (1). Row r of a buffer of width w is
# at r × w from its start.
# With bf16 products (matmul.pxd) the workspace also holds bf16 copies: each layer's input
# (h_col[l], the gathered rows' for the first layer, n_l wide) and two of dL/dz (hd0_col,
# hd1_col, ping-ponged as the deltas are), in columns of the network's dtype enough for their
# bf16 rows. mm is the network's choice of product (NULL: BLAS in its dtype).

from matmul cimport Matmul


cdef struct Layout:
    int n_layers, loss
    const int* sizes            # n_layers + 1 widths
    const int* kinds            # activation per layer
    const double* dropout       # dropout rate on each layer's output
    const Py_ssize_t* w_off     # into params
    const Py_ssize_t* b_off
    const Py_ssize_t* a_col     # into the workspace, in widths (× capacity)
    const Py_ssize_t* z_col
    const Py_ssize_t* o_col
    const Py_ssize_t* h_col     # bf16 only, else NULL
    Py_ssize_t hd0_col, hd1_col
    const Matmul* mm
    Py_ssize_t d0_col, d1_col, t_col, sw_col, row_width, n_params
    double slope, l2


cdef inline int n_outputs(const Layout* L) noexcept nogil:
    return L.sizes[L.n_layers]


cdef inline bint half_rows(const Layout* L) noexcept nogil:
    """Whether the workspace holds the bf16 copies of the bf16 products"""
    return L.h_col != NULL
