/*
 * larson_sized.c - small-object variant of larson.c (modeled on the Larson &
 * Krishnan "larson" allocator benchmark run with small sizes, as in
 * mimalloc-bench's "larsonN-sized").  Written from scratch for arenalloc.
 * Same program as larson.c, but every block is 8..128 bytes, and more
 * generations run so that it takes about as long.
 *
 * Usage: larson_sized [scale]   (scale multiplies the number of generations)
 */
#define BENCH_NAME "larson_sized"
#define LARSON_MAX_SIZE 128
#define LARSON_GENERATIONS 600

#include "larson.c"
