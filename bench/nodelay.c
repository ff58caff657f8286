/*
 * Diagnostic only: an LD_PRELOAD shim that turns every TCP_NODELAY=0 into 1.
 * bench/run builds it to show how much of the Lambda bootstrap's cold start
 * is Nagle's algorithm meeting the Runtime API's delayed ACK (lambda_runtime's
 * HTTP client leaves TCP_NODELAY off and offers no way to change it).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
int setsockopt(int fd, int level, int name, const void *val, socklen_t len) {
    static int (*real)(int, int, int, const void *, socklen_t);
    if (!real) real = dlsym(RTLD_NEXT, "setsockopt");
    if (level == IPPROTO_TCP && name == TCP_NODELAY) { int one = 1; return real(fd, level, name, &one, sizeof one); }
    return real(fd, level, name, val, len);
}
