// Rows of a file gathered into memory outside Python and without the GIL: how a streamed
// memory-mapped `.npy` set (compiler/data/mapped.py) reads the rows of a chunk of batches.
//
// The reads go through io_uring where the kernel allows it: a batch of up to 256 reads per
// system call instead of one each. For 1 KiB rows of a 4 GiB file in the page cache on a
// 2-core VM: a Python loop of os.preadv ~3 us a row, a C loop of pread 1.15-1.2 us, io_uring
// 0.65 us (all of it in the calling thread: cached reads complete inline). That CPU is taken
// from the training step beside the reader. Where io_uring cannot be set up (an old kernel,
// `kernel.io_uring_disabled`, a seccomp profile that blocks it, NNSPEC_IO_URING=0) the rows
// are read with pread.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

#if defined(__linux__) && __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#define NNSPEC_HAVE_URING 1
#endif

namespace {

// Reads one row whole with pread (retrying interrupted and short reads); false when the file
// has no such row (an error, or a file shorter than the row).
bool read_row(int fd, char* dst, int64_t row, int64_t offset) {
  int64_t done = 0;
  while (done < row) {
    const ssize_t got = pread(fd, dst + done, static_cast<size_t>(row - done),
                              static_cast<off_t>(offset + done));
    if (got > 0) {
      done += got;
    } else if (got < 0 && errno == EINTR) {
      continue;
    } else {
      return false;
    }
  }
  return true;
}

int64_t gather_pread(int fd, int64_t base, int64_t row, const int64_t* rows,
                     const int64_t* order, int64_t n, char* out) {
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = order[k];
    if (!read_row(fd, out + i * row, row, base + rows[i] * row)) return k;
  }
  return -1;
}

#ifdef NNSPEC_HAVE_URING

constexpr unsigned kDepth = 256;  // reads per system call

// One thread's ring, set up on its first gather and closed when the thread ends. A ring is
// never shared between threads (Grain reads chunks on several), so it needs no lock.
struct Ring {
  int fd = -1;
  pid_t pid = 0;  // a forked child must not use its parent's ring
  unsigned entries = 0;
  char* sq = nullptr;
  char* cq = nullptr;
  size_t sq_bytes = 0, cq_bytes = 0, sqe_bytes = 0;
  io_uring_sqe* sqes = nullptr;
  unsigned *sq_tail = nullptr, *sq_mask = nullptr, *sq_array = nullptr;
  unsigned *cq_head = nullptr, *cq_tail = nullptr, *cq_mask = nullptr;
  io_uring_cqe* cqes = nullptr;

  bool open() {
    io_uring_params p;
    std::memset(&p, 0, sizeof p);
    const long ring = syscall(__NR_io_uring_setup, kDepth, &p);
    if (ring < 0) return false;
    fd = static_cast<int>(ring);
    entries = p.sq_entries;
    sq_bytes = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cq_bytes = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) sq_bytes = cq_bytes = std::max(sq_bytes, cq_bytes);
    sqe_bytes = p.sq_entries * sizeof(io_uring_sqe);
    void* s = mmap(nullptr, sq_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   IORING_OFF_SQ_RING);
    if (s == MAP_FAILED) return fail();
    sq = static_cast<char*>(s);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
      cq = sq;
    } else {
      void* c = mmap(nullptr, cq_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     IORING_OFF_CQ_RING);
      if (c == MAP_FAILED) return fail();
      cq = static_cast<char*>(c);
    }
    void* e = mmap(nullptr, sqe_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   IORING_OFF_SQES);
    if (e == MAP_FAILED) return fail();
    sqes = static_cast<io_uring_sqe*>(e);
    sq_tail = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    sq_mask = reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    sq_array = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    cq_head = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
    cq_tail = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
    cq_mask = reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
    cqes = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
    pid = getpid();
    return true;
  }

  bool fail() {
    close();
    return false;
  }

  void close() {
    if (sqes) munmap(sqes, sqe_bytes);
    if (cq && cq != sq) munmap(cq, cq_bytes);
    if (sq) munmap(sq, sq_bytes);
    if (fd >= 0) ::close(fd);
    *this = Ring();
  }

  ~Ring() {
    if (pid == getpid()) close();
  }
};

std::atomic<int> uring_state{0};  // 0 untried, 1 works, -1 unavailable in this process
thread_local Ring ring;

Ring* thread_ring() {
  if (uring_state.load() < 0) return nullptr;
  if (ring.fd >= 0 && ring.pid == getpid()) return &ring;
  ring = Ring();  // after a fork: the parent's ring belongs to the parent
  if (uring_state.load() == 0) {
    const char* off = std::getenv("NNSPEC_IO_URING");
    if (off && std::strcmp(off, "0") == 0) {
      uring_state.store(-1);
      return nullptr;
    }
  }
  if (!ring.open()) {
    uring_state.store(-1);
    return nullptr;
  }
  uring_state.store(1);
  return &ring;
}

// The same contract as gather_pread; a read the ring reports failed or short is done again
// with pread, which then tells a real failure from an interrupted or partial read.
int64_t gather_uring(Ring* r, int fd, int64_t base, int64_t row, const int64_t* rows,
                     const int64_t* order, int64_t n, char* out) {
  const int64_t depth = std::min<int64_t>(kDepth, r->entries);
  for (int64_t lo = 0; lo < n; lo += depth) {
    const unsigned count = static_cast<unsigned>(std::min<int64_t>(depth, n - lo));
    const unsigned tail = *r->sq_tail;
    for (unsigned j = 0; j < count; ++j) {
      const unsigned slot = (tail + j) & *r->sq_mask;
      io_uring_sqe* e = &r->sqes[slot];
      std::memset(e, 0, sizeof *e);
      const int64_t i = order[lo + j];
      e->opcode = IORING_OP_READ;
      e->fd = fd;
      e->addr = reinterpret_cast<uint64_t>(out + i * row);
      e->len = static_cast<uint32_t>(row);
      e->off = static_cast<uint64_t>(base + rows[i] * row);
      e->user_data = static_cast<uint64_t>(lo + j);
      r->sq_array[slot] = slot;
    }
    __atomic_store_n(r->sq_tail, tail + count, __ATOMIC_RELEASE);
    unsigned submitted = 0, completed = 0;
    int64_t first_bad = -1;
    while (completed < count) {
      const long got = syscall(__NR_io_uring_enter, r->fd, count - submitted,
                               count - completed, IORING_ENTER_GETEVENTS, nullptr, 0);
      if (got < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) {
        // The ring broke mid-batch: closing it ends its reads; this batch and the rest are
        // read again with pread (reading a row twice writes the same bytes).
        r->close();
        uring_state.store(-1);
        const int64_t k = gather_pread(fd, base, row, rows, order + lo, n - lo, out);
        return k < 0 ? -1 : lo + k;
      }
      if (got > 0) submitted += static_cast<unsigned>(got);
      unsigned head = *r->cq_head;
      const unsigned end = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
      for (; head != end; ++head, ++completed) {
        const io_uring_cqe& c = r->cqes[head & *r->cq_mask];
        if (c.res != row) {
          const int64_t k = static_cast<int64_t>(c.user_data);
          const int64_t i = order[k];
          if (!read_row(fd, out + i * row, row, base + rows[i] * row) &&
              (first_bad < 0 || k < first_bad)) {
            first_bad = k;
          }
        }
      }
      __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    }
    if (first_bad >= 0) return first_bad;
  }
  return -1;
}

#endif  // NNSPEC_HAVE_URING

}  // namespace

extern "C" {

// Reads rows[order[k]] of `row` bytes each, at file offset base + rows[.] * row, into
// out + order[k] * row, for k = 0..n-1 (order ascending in file position: one pass over the
// file). Returns -1 when every row was read, else the position k of the first row that could
// not be read whole (an error, or a file shorter than the row).
int64_t nnspec_gather_rows(int fd, int64_t base, int64_t row, const int64_t* rows,
                           const int64_t* order, int64_t n, char* out) {
#ifdef NNSPEC_HAVE_URING
  if (row > 0 && row <= (int64_t{1} << 30)) {
    if (Ring* r = thread_ring()) return gather_uring(r, fd, base, row, rows, order, n, out);
  }
#endif
  return gather_pread(fd, base, row, rows, order, n, out);
}

// nnspec_gather_rows with pread alone (the fallback, callable on its own for tests).
int64_t nnspec_gather_rows_pread(int fd, int64_t base, int64_t row, const int64_t* rows,
                                 const int64_t* order, int64_t n, char* out) {
  return gather_pread(fd, base, row, rows, order, n, out);
}

// Which reader the gathers of this process use: 1 io_uring, 0 pread, -1 not decided yet (no
// gather ran); for metrics and tests.
int nnspec_gather_reader() {
#ifdef NNSPEC_HAVE_URING
  const int s = uring_state.load();
  return s == 0 ? -1 : (s > 0 ? 1 : 0);
#else
  return 0;
#endif
}

}  // extern "C"
