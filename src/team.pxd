# The thread team of a parallel call: cdnn's own pool of threads, a barrier, and each thread's
# share of a range.
#
# A pass shared by a team is called by every thread of the team with its own tid; the functions
# that contain a barrier say "every thread of the team calls this" where they are defined, and a
# team of one never waits. Shares are contiguous and fixed by (n, tid, team), so results are
# deterministic for a given team size.
#
# Why a pool of its own, not OpenMP's: a thread that waits must not burn the core its team-mate
# needs. On a busy machine (another process, a second fit, a GridSearchCV worker beside this
# one) a team-mate is often descheduled, and libgomp's waiters spin for up to 300,000 rounds at
# every barrier and after every region before they sleep; the only switch for that is the
# process-wide OMP_WAIT_POLICY, which changes every other OpenMP library in the process too.
# Here a waiter spins for a few microseconds (enough for the waits of an idle machine: a
# team-mate a little behind) and then sleeps in the kernel (a futex on Linux), so the core goes
# to whoever can use it. docs/ARCHITECTURE.md has the measurements.
#
# Each Python thread that runs a parallel call gets a pool of its own (workers are started when
# first needed and stopped when that thread ends), so concurrent calls from several Python
# threads never share or wait for one another's workers, as with OpenMP's teams. A failure to
# start a worker is returned to the caller (MemoryError in Python), never an exit. After fork
# the child's pool is empty: its workers did not survive the fork.

cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(_WIN32)
    #define CDNN_POOL 1
    #include <errno.h>
    #include <limits.h>
    #include <pthread.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <time.h>
    #ifdef __linux__
    #include <linux/futex.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #endif
    #else
    #define CDNN_POOL 0     /* MSVC: no pool yet; every call runs on the calling thread */
    #endif

    typedef void (*team_work)(void* ctx, int tid, int team);

    #if CDNN_POOL
    #define TEAM_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define TEAM_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

    /* How long a waiter spins before it sleeps (ns); team_set_spin changes it, for tests and
       the benchmarks that measure it. */
    static long team_spin_ns = 5000;

    static void team_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }

    static long team_now_ns(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (long)t.tv_sec * 1000000000L + t.tv_nsec;
    }

    /* Sleeping on a word: a futex on Linux, a condition variable elsewhere. */
    #ifdef __linux__
    static void team_sleep(unsigned* word, unsigned seen) {
        syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
    }
    static void team_wake(unsigned* word) {
        syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    }
    #else
    static pthread_mutex_t team_sleep_lock = PTHREAD_MUTEX_INITIALIZER;
    static pthread_cond_t team_sleep_cond = PTHREAD_COND_INITIALIZER;
    static void team_sleep(unsigned* word, unsigned seen) {
        pthread_mutex_lock(&team_sleep_lock);
        while (TEAM_LOAD(word) == seen)
            pthread_cond_wait(&team_sleep_cond, &team_sleep_lock);
        pthread_mutex_unlock(&team_sleep_lock);
    }
    static void team_wake(unsigned* word) {
        (void)word;
        pthread_mutex_lock(&team_sleep_lock);
        pthread_cond_broadcast(&team_sleep_cond);
        pthread_mutex_unlock(&team_sleep_lock);
    }
    #endif

    /* Wait until *word differs from seen: spin for team_spin_ns, then sleep. sleepers counts
       the threads asleep on word, so that a waker makes the system call only when one is. */
    static unsigned team_wait(unsigned* word, unsigned seen, int* sleepers) {
        unsigned now;
        long deadline = 0;
        int round;
        for (round = 0;; round++) {
            now = TEAM_LOAD(word);
            if (now != seen) return now;
            if ((round & 63) == 63) {
                long t = team_now_ns();
                if (deadline == 0) deadline = t + team_spin_ns;
                else if (t >= deadline) break;
            }
            team_relax();
        }
        __atomic_add_fetch(sleepers, 1, __ATOMIC_SEQ_CST);
        while ((now = __atomic_load_n(word, __ATOMIC_SEQ_CST)) == seen)
            team_sleep(word, seen);
        __atomic_sub_fetch(sleepers, 1, __ATOMIC_SEQ_CST);
        return now;
    }

    /* After a change to *word (stored with SEQ_CST): wake its sleepers, if any. */
    static void team_signal(unsigned* word, int* sleepers) {
        if (__atomic_load_n(sleepers, __ATOMIC_SEQ_CST) > 0) team_wake(word);
    }

    /* Each worker's own mailbox, on a cache line of its own; it never moves. */
    typedef struct {
        unsigned go;                /* changes when the worker is to run the current call */
        int sleepers;
        struct TeamPool* pool;
        int tid;
        pthread_t thread;
    } TeamWorker;

    typedef struct TeamPool {
        TeamWorker** workers;       /* tid 1 .. n_workers */
        int n_workers, room;
        team_work work;             /* the current call, read by its team after their go */
        void* ctx;
        int team;
        int quit;
        char pad0[64];
        unsigned busy;              /* workers of the current call not yet done */
        int busy_sleepers;
        char pad1[64];
        unsigned arrived;           /* the barrier: threads arrived in this phase */
        char pad2[64];
        unsigned phase;
        int phase_sleepers;
    } TeamPool;

    static __thread TeamPool* team_own;       /* the pool this thread starts calls on */
    static __thread TeamPool* team_current;   /* the pool of the call this thread is in */
    static pthread_key_t team_key;
    static pthread_once_t team_once = PTHREAD_ONCE_INIT;

    /* OpenBLAS gives each thread that calls it a work buffer of about 32 MiB on its first
       call, and when that allocation fails it retries forever: a hang, not an error. So
       before a team first runs, the room for what its threads will need is checked at once:
       the calling thread's buffer, and each new worker's buffer, stack and malloc arena. A
       process without that much address space left (ulimit -v) gets ENOMEM instead. */
    #define TEAM_BLAS_BUFFER ((size_t)33 << 20)
    #define TEAM_NEW_THREAD (TEAM_BLAS_BUFFER + ((size_t)72 << 20))
    static __thread int team_reserved;      /* this thread's buffer was checked */

    static int team_room(size_t bytes) {
        void* p;
        if (bytes == 0) return 0;
        p = mmap(NULL, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return ENOMEM;
        munmap(p, bytes);
        return 0;
    }

    static void* team_worker_main(void* arg) {
        TeamWorker* w = (TeamWorker*)arg;
        TeamPool* p = w->pool;
        unsigned seen = 0;
        team_current = p;
        for (;;) {
            seen = team_wait(&w->go, seen, &w->sleepers);
            if (TEAM_LOAD(&p->quit)) return NULL;
            p->work(p->ctx, w->tid, p->team);
            if (__atomic_sub_fetch(&p->busy, 1, __ATOMIC_SEQ_CST) == 0)
                team_signal(&p->busy, &p->busy_sleepers);
        }
    }

    static void team_go(TeamWorker* w) {
        __atomic_add_fetch(&w->go, 1, __ATOMIC_SEQ_CST);
        team_signal(&w->go, &w->sleepers);
    }

    /* The owning thread ended: stop and join its workers. */
    static void team_destroy(void* arg) {
        TeamPool* p = (TeamPool*)arg;
        int i;
        if (p == NULL) return;
        TEAM_STORE(&p->quit, 1);
        for (i = 0; i < p->n_workers; i++) team_go(p->workers[i]);
        for (i = 0; i < p->n_workers; i++) {
            pthread_join(p->workers[i]->thread, NULL);
            free(p->workers[i]);
        }
        free(p->workers);
        free(p);
    }

    /* In a fork child only the forking thread lives on: its pool's workers are gone. */
    static void team_after_fork_child(void) {
        team_own = NULL;
        pthread_setspecific(team_key, NULL);    /* not the parent's workers to join at exit */
    }

    static void team_init_once(void) {
        pthread_key_create(&team_key, team_destroy);
        pthread_atfork(NULL, NULL, team_after_fork_child);
    }

    /* This thread's pool with at least n workers: 0, or an errno when one cannot start (the
       workers started so far stay). */
    static int team_grow(int n) {
        TeamPool* p;
        int err;
        pthread_once(&team_once, team_init_once);
        p = team_own;
        if (p == NULL) {
            p = (TeamPool*)calloc(1, sizeof(TeamPool));
            if (p == NULL) return ENOMEM;
            team_own = p;
            pthread_setspecific(team_key, p);
        }
        if (n > p->room) {
            TeamWorker** more = (TeamWorker**)realloc(p->workers, (size_t)n * sizeof(void*));
            if (more == NULL) return ENOMEM;
            p->workers = more;
            p->room = n;
        }
        while (p->n_workers < n) {
            TeamWorker* w = (TeamWorker*)calloc(1, sizeof(TeamWorker) + 64);
            if (w == NULL) return ENOMEM;
            w->pool = p;
            w->tid = p->n_workers + 1;
            err = pthread_create(&w->thread, NULL, team_worker_main, w);
            if (err != 0) {
                free(w);
                return err;
            }
            p->workers[p->n_workers++] = w;
        }
        return 0;
    }

    /* Run work(ctx, tid, team) on team threads, the calling one as tid 0; returns when every
       one has returned: 0, or an errno when the threads could not be started or could not
       reserve their BLAS buffer (then nothing ran). */
    static int team_run(team_work work, void* ctx, int team) {
        TeamPool* p;
        int i, err;
        TeamPool* outer = team_current;
        if (outer != NULL) {    /* called from inside a call: this thread alone */
            work(ctx, 0, 1);
            return 0;
        }
        {
            int started = team_own != NULL ? team_own->n_workers : 0;
            size_t need = team_reserved ? 0 : TEAM_BLAS_BUFFER;
            if (team - 1 > started) need += (size_t)(team - 1 - started) * TEAM_NEW_THREAD;
            err = team_room(need);
            if (err != 0) return err;
            team_reserved = 1;
        }
        if (team <= 1) {
            work(ctx, 0, 1);
            return 0;
        }
        err = team_grow(team - 1);
        if (err != 0) return err;
        p = team_own;
        p->work = work;
        p->ctx = ctx;
        p->team = team;
        p->arrived = 0;
        __atomic_store_n(&p->busy, (unsigned)(team - 1), __ATOMIC_SEQ_CST);
        for (i = 0; i < team - 1; i++) team_go(p->workers[i]);
        team_current = p;
        work(ctx, 0, team);
        team_current = NULL;
        {
            unsigned left;
            while ((left = TEAM_LOAD(&p->busy)) != 0)
                team_wait(&p->busy, left, &p->busy_sleepers);
        }
        return 0;
    }

    /* Every thread of the current call's team calls this. */
    static void team_barrier(void) {
        TeamPool* p = team_current;
        unsigned phase;
        if (p == NULL || p->team <= 1) return;
        phase = TEAM_LOAD(&p->phase);
        if (__atomic_add_fetch(&p->arrived, 1, __ATOMIC_ACQ_REL) == (unsigned)p->team) {
            __atomic_store_n(&p->arrived, 0, __ATOMIC_RELAXED);
            __atomic_add_fetch(&p->phase, 1, __ATOMIC_SEQ_CST);
            team_signal(&p->phase, &p->phase_sleepers);
        } else {
            team_wait(&p->phase, phase, &p->phase_sleepers);
        }
    }

    static void team_set_spin(long ns) { team_spin_ns = ns < 0 ? 0 : ns; }

    #else   /* no pool: a team is always the calling thread */
    static int team_run(team_work work, void* ctx, int team) { work(ctx, 0, 1); return 0; }
    static void team_barrier(void) {}
    static void team_set_spin(long ns) { (void)ns; }
    #endif
    """
    ctypedef void (*team_work)(void* ctx, int tid, int team) noexcept nogil
    int team_run(team_work work, void* ctx, int team) noexcept nogil
    void team_barrier() noexcept nogil
    void team_set_spin(long ns) noexcept nogil


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
