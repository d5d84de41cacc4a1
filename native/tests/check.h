// A minimal assertion helper for the native tests (ctest reads the exit code).
#pragma once
#include <stdio.h>
#include <stdlib.h>

static int g_failures = 0;

#define CHECK(cond, ...)                                             \
  do {                                                               \
    if (!(cond)) {                                                   \
      fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                  \
      fprintf(stderr, "\n");                                         \
      if (++g_failures > 20) exit(1);                                \
    }                                                                \
  } while (0)

#define TEST_MAIN_END()                                   \
  do {                                                    \
    if (g_failures) {                                     \
      fprintf(stderr, "%d check(s) failed\n", g_failures); \
      return 1;                                           \
    }                                                     \
    printf("ok\n");                                       \
    return 0;                                             \
  } while (0)
