# The wrappers' arguments into the structs the passes run on (src/_network.pyx includes this:
# its Input, Rows and Layout come from passes.pxd and layout.pxd). The checks guard memory
# only; the Python layer has named every bad input before (cdnn/_validation.py, cdnn/_sparse.py).

cdef Input _input(X, const floating* like, const Layout* L, Py_ssize_t* n) except *:
    """X as the first layer reads it, and its rows in n: X is a C-contiguous 2-D array of
    like's dtype or, for CSR rows, an object with indptr (intp), indices (C int) and data
    (like's dtype) arrays. The checks guard memory only (cdnn._sparse names bad input)."""
    cdef Input x
    cdef const floating[:, ::1] rows
    cdef const floating[::1] values
    cdef const Py_ssize_t[::1] indptr
    cdef const int[::1] indices
    x.itemsize, x.n_cols, x.indptr, x.indices = sizeof(floating), L.sizes[0], NULL, NULL
    x.clean_grad = False
    if X.__class__ is np.ndarray:
        rows = X
        if rows.shape[1] != L.sizes[0]:
            raise ValueError("X has the wrong shape")
        x.kind, x.X, n[0] = DENSE_ROWS, <const char*>&rows[0, 0], rows.shape[0]
        return x
    values, indptr, indices = X.data, X.indptr, X.indices
    x.kind, n[0] = CSR_ROWS, _check_csr(indptr, indices, values.shape[0], L.sizes[0])
    x.indptr = &indptr[0]
    if values.shape[0] > 0 and indices.shape[0] > 0:    # else no row has an entry
        x.X, x.indices = <const char*>&values[0], &indices[0]
    return x


cdef Py_ssize_t _check_csr(const Py_ssize_t[::1] indptr, const int[::1] indices,
                           Py_ssize_t n_values, int n_cols) except -1:
    """The rows of a CSR structure, after checking that every entry it points to lies in
    indices and values, and every column index in range"""
    cdef Py_ssize_t n = indptr.shape[0] - 1, i, k
    cdef bint ok = n >= 0 and indptr[0] >= 0
    with nogil:
        for i in range(n):
            ok = ok and indptr[i] <= indptr[i + 1]
        ok = ok and indptr[n] <= min(indices.shape[0], n_values)
        if ok:
            for k in range(indptr[0], indptr[n]):
                ok = ok and 0 <= indices[k] < n_cols
    if not ok:
        raise ValueError("X is not well-formed CSR rows of the network's width")
    return n


cdef Rows _rows(batch, const floating* like, const Layout* L, Py_ssize_t* n) except *:
    """The rows of a batch (cdnn._engine's Batch: X, labels, targets, weights by name), checked;
    their number in n"""
    cdef const int[::1] labels = batch.labels
    cdef const floating[:, ::1] targets = batch.targets
    cdef const floating[::1] weights = batch.weights
    cdef Rows data
    data.x = _input(batch.X, like, L, n)
    _check_targets(L, n[0], labels, targets, weights)
    data.labels = &labels[0] if labels is not None else NULL
    data.targets = &targets[0, 0] if targets is not None else NULL
    data.weights = &weights[0] if weights is not None else NULL
    return data


cdef int _check_entry_room(const Py_ssize_t* indptr, const Py_ssize_t[::1] order,
                           Py_ssize_t batch, Py_ssize_t room) except -1:
    """That every batch of order's rows has at most room stored entries (the CSR gather's
    buffers); order's indices are checked already"""
    cdef Py_ssize_t i, entries = 0
    for i in range(order.shape[0]):
        if i % batch == 0:
            entries = 0
        entries += indptr[order[i] + 1] - indptr[order[i]]
        if entries > room:
            raise ValueError("a batch has more stored entries than batch_buffer holds")
    return 0


cdef Py_ssize_t _capacity(const Layout* L, Py_ssize_t n_params, Py_ssize_t ws_size) except -1:
    if n_params != L.n_params:
        raise ValueError(f"params has {n_params} elements, the network {L.n_params}")
    if ws_size < L.row_width:
        raise ValueError("the workspace holds no row")
    return ws_size // L.row_width


cdef int _check_targets(const Layout* L, Py_ssize_t n, const int[::1] labels,
                        const floating[:, ::1] targets, const floating[::1] weights) except -1:
    """Shapes, and every label in range"""
    cdef Py_ssize_t i, k = n_outputs(L)
    if n < 1:
        raise ValueError("X has no rows")
    if (labels is None) == (targets is None):
        raise ValueError("give either labels or targets")
    if labels is not None:
        if L.loss != SOFTMAX_CROSS_ENTROPY or labels.shape[0] != n:
            raise ValueError("labels need the softmax loss and one label per row")
        for i in range(n):
            if not 0 <= labels[i] < k:
                raise ValueError(f"label {labels[i]} is out of range for {k} classes")
    if targets is not None and (targets.shape[0] != n or targets.shape[1] != k):
        raise ValueError("targets have the wrong shape")
    if weights is not None and weights.shape[0] != n:
        raise ValueError("weights have the wrong size")
    return 0
