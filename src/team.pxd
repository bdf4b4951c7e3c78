# The thread team of a parallel region: its size, a barrier, and each thread's share of a range.
#
# A pass shared by a team is called by every thread of the team with its own tid; the functions
# that contain a barrier say "every thread of the team calls this" where they are defined, and a
# team of one never waits. Shares are contiguous and fixed by (n, tid, team), so results are
# deterministic for a given team size.

cdef extern from *:
    # Cython's parallel blocks have no barrier statement, nor the size of the team: OpenMP may
    # grant fewer threads than asked (OMP_THREAD_LIMIT, a region inside another), so every
    # region splits its work by the threads it has. An orphaned barrier binds to the enclosing
    # region. Built without OpenMP, a region is one thread and the barrier does nothing.
    """
    #ifdef _OPENMP
    #include <omp.h>
    #endif
    static void team_barrier(void) {
    #pragma omp barrier
    }
    static int team_size(void) {
    #ifdef _OPENMP
        return omp_get_num_threads();
    #else
        return 1;
    #endif
    }
    """
    void team_barrier() noexcept nogil
    int team_size() noexcept nogil


cdef struct Part:
    Py_ssize_t first, count


cdef inline Part share(Py_ssize_t n, int tid, int team) noexcept nogil:
    """Thread tid's part of range(n), split evenly between the team"""
    # returned, not written through a pointer: Cython makes a variable private to the threads
    # of a parallel block only where the block assigns it
    cdef Part p
    p.first = n * tid // team
    p.count = n * (tid + 1) // team - p.first
    return p


cdef inline Part whole(Py_ssize_t n) noexcept nogil:
    """All of range(n): the share of a thread that works alone"""
    return share(n, 0, 1)


cdef inline void barrier(int team) noexcept nogil:
    """Wait for every thread of the team (every thread of the team calls this)"""
    if team > 1:
        team_barrier()
