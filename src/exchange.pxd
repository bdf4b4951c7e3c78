# The exchange phase over MPI (step.pxd's exchange_fn), with no compile-time MPI: the Python
# layer (cdnn/distributed.py) finds MPI_Allreduce in the MPI library mpi4py loaded and hands over
# its address and the handles of the communicator, datatypes and MPI_SUM. MPICH and its kin
# (Intel MPI, Cray MPICH) use int handles; Open MPI and the standard MPI ABI, pointers: the
# call is made through the matching function type, so each argument goes as the library reads it.
#
# A step's exchange is two allreduces: first the step's loss, correct count and a failure flag
# (3 doubles), so that every process learns at once whether any step failed and then skips the
# second, the gradient's sum, together.
#
# The loss's normaliser. Each process's step scaled its loss by 1 / Σw over its own rows
# (passes.pxd loss_scale), and added the L2 term; the one-process step scales by 1 / Σw over the
# whole global batch. With factor f = (Σw here) / (Σw of the global batch), Σ f·(local loss and
# gradient) over processes is the one-process result, the L2 term included (Σ f = 1). When every
# process has the same f (equal parts, no sample weights: the usual case) that is f·Σ(gradient),
# and f goes to the update as gscale, with no pass over the gradient; otherwise each process
# scales its gradient before the sum. f = 0 marks a part with nothing in it (a padding row):
# it contributes nothing at all.

from libc.stdint cimport uintptr_t
from libc.string cimport memcpy, memset

from step cimport Exchange

ctypedef int (*allreduce_int)(const void* send, void* recv, int count, int datatype, int op,
                              int comm) noexcept nogil
ctypedef int (*allreduce_ptr)(const void* send, void* recv, int count, void* datatype, void* op,
                              void* comm) noexcept nogil

cdef enum:
    MAX_COUNT = 1 << 30         # elements per MPI call: MPI counts are ints


cdef struct MPIContext:
    void* allreduce             # MPI_Allreduce
    bint pointer_handles
    # unsigned: mpi4py gives an MPICH int handle as the int's bits, and those of derived
    # communicators (Dup, Split: 0x84000000 and up) overflow a signed intptr_t; <int> below
    # takes back the int the library reads
    uintptr_t comm, op_sum, grad_type, double_type
    void* in_place              # MPI_IN_PLACE, or NULL: sum into recv, then copy back
    void* recv                  # n parameters, when in_place is NULL
    Py_ssize_t itemsize         # of a parameter: 4 or 8
    const double* factors       # each step's f (see above), in the order the steps run
    const char* uniform         # whether the step's f is the same on every process
    Py_ssize_t n_factors, next


cdef inline int mpi_allreduce(MPIContext* m, const void* send, void* recv, Py_ssize_t count,
                              uintptr_t datatype, Py_ssize_t itemsize) noexcept nogil:
    """recv := Σ send over the processes (MPI_SUM), in chunks of at most MAX_COUNT elements;
    returns MPI's error code (0: success)"""
    cdef Py_ssize_t start = 0, chunk
    cdef int err = 0
    while start < count and err == 0:
        chunk = min(count - start, <Py_ssize_t>MAX_COUNT)
        if m.pointer_handles:
            err = (<allreduce_ptr>m.allreduce)(
                send if send == m.in_place else <const char*>send + start * itemsize,
                <char*>recv + start * itemsize, <int>chunk, <void*>datatype, <void*>m.op_sum,
                <void*>m.comm)
        else:
            err = (<allreduce_int>m.allreduce)(
                send if send == m.in_place else <const char*>send + start * itemsize,
                <char*>recv + start * itemsize, <int>chunk, <int>datatype, <int>m.op_sum,
                <int>m.comm)
        start += chunk
    return err


cdef inline void scale_by(void* grad, Py_ssize_t n, Py_ssize_t itemsize, double f) noexcept nogil:
    cdef Py_ssize_t i
    cdef float* g32 = <float*>grad
    cdef double* g64 = <double*>grad
    if f == 0:
        memset(grad, 0, n * itemsize)       # also a NaN of a padding row's gradient
    elif itemsize == 4:
        for i in range(n):
            g32[i] *= <float>f
    else:
        for i in range(n):
            g64[i] *= f


cdef inline int mpi_exchange(void* context, void* grad, Py_ssize_t n,
                             Exchange* x) noexcept nogil:
    """step.pxd's exchange_fn over MPI: the step's results, then (when no process failed) the
    gradient, summed over the processes"""
    cdef MPIContext* m = <MPIContext*>context
    cdef double f = 1, local[3]
    cdef double total[3]
    cdef bint uniform = False
    cdef int err
    if m.next < m.n_factors:
        f, uniform = m.factors[m.next], m.uniform[m.next] != 0
    m.next += 1
    local[0] = f * x.loss if f != 0 else 0
    local[1] = x.correct if f != 0 else 0
    local[2] = x.failed if f != 0 else 0
    err = mpi_allreduce(m, local, total, 3, m.double_type, sizeof(double))
    if err != 0:
        return err
    x.loss, x.correct, x.failed = total[0], total[1], total[2] != 0
    if x.failed:
        return 0
    if not uniform:
        scale_by(grad, n, m.itemsize, f)
    if m.in_place != NULL:
        err = mpi_allreduce(m, m.in_place, grad, n, m.grad_type, m.itemsize)
    else:
        err = mpi_allreduce(m, grad, m.recv, n, m.grad_type, m.itemsize)
        memcpy(grad, m.recv, n * m.itemsize)
    x.gscale = f if uniform else 1
    return err
