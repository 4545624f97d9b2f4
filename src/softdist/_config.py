"""Every tunable of softdist in one place: working-memory budgets, chunk and tile sizes, thresholds and
safety factors. Memory is always in bytes.

Modules read these names at call time (``_config.NAME``), so assigning one, e.g.
``softdist._config.KNN_WORKING_MEMORY = 32 << 20``, takes effect on the next call (except inside JAX
functions already compiled: those keep the values they were traced with). This module imports nothing:
every layer may read it.
"""

from __future__ import annotations

MiB = 1 << 20

# -- working memory (bytes) --------------------------------------------------------------------------------
# knn: distance tiles (and their temporaries) at a time, on a CPU; the `working_memory` argument overrides it.
KNN_WORKING_MEMORY = 64 * MiB
# Linear head, chunk_size="auto": one chunk of float32 (or float64) logits on a CPU; on a GPU at most
# 1 / GPU_FREE_MEMORY_DIVISOR of the free memory and never more than LINEAR_GPU_WORKING_MEMORY.
LINEAR_CPU_WORKING_MEMORY = 128 * MiB
LINEAR_GPU_WORKING_MEMORY = 1 << 30
# On a GPU (torch CUDA, CuPy) the default working memory is the free device memory divided by this.
GPU_FREE_MEMORY_DIVISOR = 4
# NumPy linear head: dW is accumulated in class blocks through one reused product buffer of at most this.
NUMPY_CLASS_BLOCK_BYTES = 16 * MiB

# Eager JAX: compiled functions kept (one per function, option set and argument shapes; about 4-10 MiB
# each on the CPU), least recently used evicted first.
JAX_COMPILED_CACHE_SIZE = 32

# -- chunk and tile sizes ----------------------------------------------------------------------------------
# Linear head, chunk_size="auto": fewer rows per chunk and the GEMMs lose efficiency (torch CPU: 32-row
# chunks 2.9x the GEMMs, 256+ rows 1.0-1.3x, issue #13).
LINEAR_MIN_AUTO_ROWS = 256
# knn tiles: a tile's temporaries per distance entry (the distances, the refinement's masks and the
# selection's copy), at most this many query rows per tile, and the reference width that splits the
# budget between rows and columns (wide reference tiles: fewer merges).
KNN_ARRAYS_PER_TILE_ENTRY = 4
KNN_MAX_TILE_ROWS = 512
KNN_TILE_COLUMNS_FOR_ROWS = 1024
# knn on Dask: the tiles of the eager pruned search inside each (query chunk, reference chunk) block.
DASK_KNN_TILE_ROWS = 512
DASK_KNN_TILE_COLUMNS = 8192
# knn on Dask: adjacent reference chunks are grouped into blocks of at most this many bytes (a larger
# chunk stays whole). Each block repeats a fixed setup and prunes with its own references' bound: at
# 20000^2 x 64 float32 in 4 row chunks, 4 x 4 blocks took 2.6x NumPy's time, one reference block per query
# chunk 1.16x (50000^2: 1.01x; issue 15). A task holds its block a few times over (with its augmented copy).
DASK_KNN_REFERENCE_BYTES = 64 * MiB
# knn pruning (eager CPU): references in the spread sample that seeds each query's bound (at most a
# sixteenth of the references); sub-tiles of this many entries stay in cache between the product and the
# comparison that reads it back (single-thread NumPy, 512 x 50000 x 66 float32: 47 ms in 8192-column
# tiles, 42 ms in 512); the bound also tightens inside a tile once this many entries per query and
# neighbour wait (sorted input, where all neighbours come at once); exact distances of the candidates in
# chunks of this many elements (100000 pairs x 64, one thread: float32 172 -> 112 ms, float64 389 -> 229
# ms at 1 << 17 against DIRECT_CHUNK_ELEMENTS; the in-place CPU kernel, _cpu.exact_sqdist_rows, is
# fastest at 512-1024 pairs x 64: 20-23 ns per element in float64, 31 at 2048).
KNN_SAMPLE_COLUMNS = 1024
KNN_SUBTILE_ENTRIES = 1 << 18
# torch (CPU) screens larger sub-tiles: its per-call overhead, not the cache, is what the sub-tile size
# decides there (50000^2 x 64 float32, 2 threads, medians of 3: 7.60 s at 1 << 18, 6.60 at 1 << 19, 5.33
# at 1 << 20, 5.46 at 1 << 21; NumPy 4.28 at 1 << 18 in the same run, slower with larger ones).
KNN_TORCH_SUBTILE_ENTRIES = 1 << 20
KNN_POOL_UPDATE_PER_ROW = 4
# A query row left with more than k + KNN_POOL_RESOLVE_EXTRA entries within its bound after a pool update
# (exact ties: duplicate or all-equal rows keep every tied entry; random data about k) has its first
# k + KNN_POOL_RESOLVE_EXTRA resolved by exact distances at once (_agnostic.neighbors._Pool). 10 distinct rows
# repeated, 20000 x 64 float32, k = 10, NumPy, 2 threads: 1.79 s at 2k + 16, 1.25 s at k + 8; all-equal
# rows (20000 x 5 zeros) 1.21 s, where keeping every tie took 6.3 s and 616 MB at 5000 rows.
KNN_POOL_RESOLVE_EXTRA = 8
KNN_EXACT_CHUNK_ELEMENTS = 1 << 16
# knn (eager CPU): query rows whose k-th distance is not finite (a NaN or inf in the query, distances that
# overflow) are finished by distances to every reference, in batches of this many (row, reference, column)
# entries.
KNN_SHORT_ROWS_ENTRIES = 1 << 20
# knn on JAX at float64: candidates per query and reference tile beyond the 2k kept, taken by a float32
# top_k and checked against the float64 values (XLA's CPU top_k is fast only for float32); a row whose
# 2k-th best is within a float32 rounding of the last candidate sends its tile to the float64 top_k.
KNN_JAX_EXTRA_CANDIDATES = 12
# knn on JAX: rank by a float32 product of the centred data (at float64 half the float64 one's time) and
# certify the k found against the float32 rounding bound (a query tile that fails is ranked by direct
# differences);
# the best k + KNN_JAX_SCREEN_EXTRA per query get exact distances. False: the static path (each tile's
# best 2k by the accurate expansion; exact ties beyond them, or a far tight cluster, may come back with
# other references).
KNN_JAX_FLOAT32_SCREEN = True
KNN_JAX_SCREEN_EXTRA = 8
# ... the direct differences' chunks: this many (query, reference, column) entries at a time.
KNN_JAX_DIRECT_ELEMENTS = 1 << 22
# ... and where those cannot resolve a query's neighbours, the exact kernel's chunks.
KNN_JAX_EXACT_ELEMENTS = 1 << 20
# ... and that float32 top_k first picks blocks of this many columns by their minimum (1: off).
KNN_JAX_SELECT_BLOCK = 16
# Largest number of elements a direct-difference chunk materialises (2 MiB in float32; the exact sum
# keeps about ten such temporaries).
DIRECT_CHUNK_ELEMENTS = 1 << 19

# NumPy linear head (softmax_loss, linear_cross_entropy) on a thread per core (at most BLAS's thread limit):
# at least this many rows per thread, and only while the threads' extra dW copies, times this factor, fit
# the score buffer (see _cpu.threaded_linear_head for the measurements: fewer rows a part lost to the rows
# in order, 2.03x against 1.81x the two products at 4096 x 256 x 10). None: off.
CPU_HEAD_THREAD_MIN_ROWS: int | None = 4096
CPU_HEAD_THREAD_MEMORY_SHARE = 4
# ... and each thread's chunk of X at most this many bytes (at least LINEAR_MIN_AUTO_ROWS rows), so that it
# stays in cache from the forward product to the backward one; None: the chunk divided by the threads.
# One-thread CPU time of softmax_loss, 20000 x 512 x 10 float64: 33 ms whether 4 MiB, 16 MiB or whole
# parts; 50000 x 256 x 100 float32 60.8 ms at 4 MiB, 63.4 ms whole (1 MiB: 64.0, the per-chunk Python cost).
CPU_HEAD_CACHE_BYTES: int | None = 4 * MiB

# -- thresholds and safety factors -------------------------------------------------------------------------
# Relative accuracy promised for distance entries that are not recomputed, per floating precision (bits).
TARGET_RTOL = {32: 1e-4, 64: 1e-10}
# Safety factor between the typical GEMM rounding error (eps * sqrt(d) * norms) and the refinement
# threshold; measured worst cases sit about 4x under the bound (benchmarks/accuracy_distances.py).
TAU_SAFETY = 4.0
# Bound of the centred expansion against the exact distance (README, "Accuracy of the distances"), used
# by the knn pruning: |D_expansion - D_exact| <= EXPANSION_BOUND * eps * sqrt(d + 2) * (|q - mean|^2 +
# |x - mean|^2).
EXPANSION_BOUND = 8.0
