// Rows of a file gathered into memory with pread, outside Python and without the GIL: how a
// streamed memory-mapped `.npy` set (compiler/data/mapped.py) reads the rows of a chunk of
// batches. A Python loop of os.preadv costs ~3 us a row on a 2-core VM, pread itself ~1.6 us;
// the difference is CPU taken from the training step that runs beside the reader.
#include <cerrno>
#include <cstdint>
#include <unistd.h>

extern "C" {

// Reads rows[order[k]] of `row` bytes each, at file offset base + rows[.] * row, into
// out + order[k] * row, for k = 0..n-1 (order ascending in file position: one pass over the
// file). Returns -1 when every row was read, else the position k of the first row that could
// not be read whole (an error, or a file shorter than the row).
int64_t nnspec_gather_rows(int fd, int64_t base, int64_t row, const int64_t* rows,
                           const int64_t* order, int64_t n, char* out) {
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = order[k];
    char* dst = out + i * row;
    int64_t done = 0;
    while (done < row) {
      const ssize_t got = pread(fd, dst + done, static_cast<size_t>(row - done),
                                static_cast<off_t>(base + rows[i] * row + done));
      if (got > 0) {
        done += got;
      } else if (got < 0 && errno == EINTR) {
        continue;
      } else {
        return k;
      }
    }
  }
  return -1;
}

}  // extern "C"
