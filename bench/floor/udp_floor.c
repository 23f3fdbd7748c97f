/*
 * udp_floor: one-way UDP latency on loopback between two processes, the floor that
 * bench/cluster.js compares this store's replication latency with (compiled by the bench with
 * `cc -O2` into a temporary directory; nothing else needs it).
 *
 * Traffic of the store's shape: datagrams of -b bytes (≈1 KB sessions), multicast to a group on
 * 127.0.0.1 as the store sends (sender: bound to 127.0.0.1:0, IP_MULTICAST_IF 127.0.0.1,
 * IP_MULTICAST_TTL 0, IP_MULTICAST_LOOP 1; receiver: bound to group:port, IP_ADD_MEMBERSHIP on
 * 127.0.0.1, SO_RCVBUF 4 MB). If the group cannot be joined or a probe sent to it does not arrive,
 * unicast to 127.0.0.1 instead (or with -u): the JSON says which ("transport") and why ("reason").
 *
 * The sender (a forked child) stamps CLOCK_MONOTONIC into each datagram right before sendto();
 * the receiver (the parent, blocked in recvfrom() as the store's network thread is in epoll)
 * reads CLOCK_MONOTONIC as soon as recvfrom() returns: latency = the difference (one host, one
 * clock). Pacing:
 *   -g GAP_US > 0  datagram i leaves at start + i × GAP_US (clock_nanosleep TIMER_ABSTIME),
 *                  whatever the receiver does: an idle link between datagrams.
 *   -g 0           back to back: datagram i + 1 leaves as soon as the receiver has seen
 *                  datagram i (it writes i to a pipe the sender blocks on; outside the interval).
 * Prints one JSON line: transport, samples, p50/p90/p99/p999/min/max/mean in µs (pN = the
 * sorted sample at index floor(N/100 × count), as bench/util.js percentiles()), lost datagrams.
 *   udp_floor [-n samples] [-w warmup] [-g gap_us] [-b bytes] [-a group] [-u]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x666c6f72u /* "flor" */
#define PROBE UINT32_MAX

struct header {
  uint32_t magic;
  uint32_t seq;
  int64_t sent_ns;
};

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "udp_floor: %s: %s\n", what, strerror(errno));
  exit(1);
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static void set_rcvtimeo(int fd, int ms) {
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) die("SO_RCVTIMEO");
}

/* reason[] is filled when multicast cannot be used: then the caller falls back to unicast. */
static char reason[256];
static int fail(const char *what) {
  snprintf(reason, sizeof reason, "%s: %s", what, strerror(errno));
  return -1;
}

/* Receiver bound to group:0 and joined on 127.0.0.1; sender set up as the store's. */
static int setup_multicast(int rx, int tx, struct in_addr group, struct sockaddr_in *dest) {
  struct in_addr lo = {htonl(INADDR_LOOPBACK)};
  int one = 1;
  unsigned char ttl = 0, loop = 1;
  if (setsockopt(rx, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) return fail("SO_REUSEADDR");
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr = group, .sin_port = 0};
  if (bind(rx, (struct sockaddr *)&a, sizeof a) < 0) return fail("bind to the group");
  socklen_t len = sizeof a;
  if (getsockname(rx, (struct sockaddr *)&a, &len) < 0) return fail("getsockname");
  struct ip_mreq mreq = {.imr_multiaddr = group, .imr_interface = lo};
  if (setsockopt(rx, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof mreq) < 0) return fail("IP_ADD_MEMBERSHIP on 127.0.0.1");
  if (setsockopt(tx, IPPROTO_IP, IP_MULTICAST_IF, &lo, sizeof lo) < 0) return fail("IP_MULTICAST_IF 127.0.0.1");
  if (setsockopt(tx, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl) < 0) return fail("IP_MULTICAST_TTL 0");
  if (setsockopt(tx, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop) < 0) return fail("IP_MULTICAST_LOOP");
  *dest = a;
  /* A join can succeed where nothing is delivered: probe it. */
  struct header probe = {MAGIC, PROBE, 0};
  char buf[2048];
  set_rcvtimeo(rx, 200);
  for (int attempt = 0; attempt < 3; attempt++) {
    if (sendto(tx, &probe, sizeof probe, 0, (struct sockaddr *)dest, sizeof *dest) < 0) return fail("sendto the group");
    ssize_t n = recv(rx, buf, sizeof buf, 0);
    if (n >= (ssize_t)sizeof probe && ((struct header *)buf)->magic == MAGIC) {
      while (recv(rx, buf, sizeof buf, MSG_DONTWAIT) > 0) {
      } /* drain the other probes */
      return 0;
    }
  }
  snprintf(reason, sizeof reason, "a probe sent to %s:%d was not delivered", inet_ntoa(group), ntohs(a.sin_port));
  return -1;
}

int main(int argc, char **argv) {
  long samples = 3000, warmup = 200, gap_us = 3000, bytes = 1024;
  const char *group_text = "228.0.0.5";
  int force_unicast = 0;
  for (int c; (c = getopt(argc, argv, "n:w:g:b:a:u")) != -1;) {
    switch (c) {
      case 'n': samples = atol(optarg); break;
      case 'w': warmup = atol(optarg); break;
      case 'g': gap_us = atol(optarg); break;
      case 'b': bytes = atol(optarg); break;
      case 'a': group_text = optarg; break;
      case 'u': force_unicast = 1; break;
      default:
        fprintf(stderr, "usage: udp_floor [-n samples] [-w warmup] [-g gap_us, 0 = back to back] [-b bytes] [-a group] [-u (unicast)]\n");
        return 2;
    }
  }
  if (samples < 1 || warmup < 0 || gap_us < 0 || bytes < (long)sizeof(struct header) || bytes > 65000) {
    fprintf(stderr, "udp_floor: bad arguments\n");
    return 2;
  }
  struct in_addr group;
  if (inet_pton(AF_INET, group_text, &group) != 1) {
    fprintf(stderr, "udp_floor: bad group %s\n", group_text);
    return 2;
  }
  const long total = warmup + samples;

  int rx = socket(AF_INET, SOCK_DGRAM, 0), tx = socket(AF_INET, SOCK_DGRAM, 0);
  if (rx < 0 || tx < 0) die("socket");
  int rcvbuf = 4 << 20;
  setsockopt(rx, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf); /* best effort, as the store */
  setsockopt(tx, SOL_SOCKET, SO_SNDBUF, &rcvbuf, sizeof rcvbuf);
  struct sockaddr_in local = {.sin_family = AF_INET, .sin_addr = {htonl(INADDR_LOOPBACK)}, .sin_port = 0};
  if (bind(tx, (struct sockaddr *)&local, sizeof local) < 0) die("bind the sender to 127.0.0.1");

  struct sockaddr_in dest;
  const char *transport = "multicast";
  if (force_unicast) snprintf(reason, sizeof reason, "unicast asked for (-u)");
  if (force_unicast || setup_multicast(rx, tx, group, &dest) < 0) {
    transport = "unicast";
    close(rx);
    rx = socket(AF_INET, SOCK_DGRAM, 0);
    if (rx < 0) die("socket");
    setsockopt(rx, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (bind(rx, (struct sockaddr *)&local, sizeof local) < 0) die("bind the receiver to 127.0.0.1");
    socklen_t len = sizeof dest;
    if (getsockname(rx, (struct sockaddr *)&dest, &len) < 0) die("getsockname");
  }

  int acks[2]; /* back to back: receiver → sender, "seen i" */
  if (pipe(acks) < 0) die("pipe");
  const int64_t start = now_ns() + 20000000; /* 20 ms: both processes are ready by then */

  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) { /* sender */
    close(rx);
    close(acks[1]);
    char *buf = calloc(1, bytes);
    memset(buf, 'x', bytes);
    struct header *h = (struct header *)buf;
    h->magic = MAGIC;
    struct timespec at = {start / 1000000000, start % 1000000000};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL);
    for (long i = 0; i < total; i++) {
      if (gap_us > 0) {
        int64_t t = start + i * gap_us * 1000;
        at.tv_sec = t / 1000000000;
        at.tv_nsec = t % 1000000000;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR) {
        }
      } else if (i > 0) {
        /* the receiver's ack of i - 1; after 1 s without one (a lost datagram), go on */
        struct pollfd p = {acks[0], POLLIN, 0};
        if (poll(&p, 1, 1000) > 0) {
          uint32_t seen;
          if (read(acks[0], &seen, sizeof seen) <= 0) break;
        }
      }
      h->seq = (uint32_t)i;
      h->sent_ns = now_ns();
      if (sendto(tx, buf, bytes, 0, (struct sockaddr *)&dest, sizeof dest) < 0 && errno != ENOBUFS && errno != EAGAIN) die("sendto");
    }
    _exit(0);
  }
  /* receiver */
  close(tx);
  close(acks[0]);
  signal(SIGPIPE, SIG_IGN);
  set_rcvtimeo(rx, 2000);
  int64_t *lat = calloc(total, sizeof *lat);
  char *seen = calloc(total, 1);
  char *buf = malloc(65536);
  long received = 0, duplicates = 0;
  while (received < total) {
    ssize_t n = recv(rx, buf, 65536, 0);
    int64_t t = now_ns();
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break; /* 2 s of silence: the rest is lost */
      die("recv");
    }
    struct header *h = (struct header *)buf;
    if (n < (ssize_t)sizeof *h || h->magic != MAGIC || h->seq >= (uint32_t)total) continue;
    if (seen[h->seq]) {
      duplicates++;
      continue;
    }
    seen[h->seq] = 1;
    lat[h->seq] = t - h->sent_ns;
    received++;
    if (gap_us == 0) {
      uint32_t s = h->seq;
      if (write(acks[1], &s, sizeof s) < 0) break;
    }
  }
  close(acks[1]);
  int status;
  waitpid(pid, &status, 0);

  int64_t *xs = malloc(samples * sizeof *xs);
  long count = 0;
  double sum = 0;
  for (long i = warmup; i < total; i++) {
    if (!seen[i]) continue;
    xs[count++] = lat[i];
    sum += lat[i];
  }
  if (count == 0) {
    fprintf(stderr, "udp_floor: nothing received (%s)\n", transport);
    return 1;
  }
  qsort(xs, count, sizeof *xs, cmp_i64);
#define US(ns) ((double)(ns) / 1000.0)
#define AT(p) US(xs[(long)((p) * count) < count ? (long)((p) * count) : count - 1])
  printf("{\"transport\":\"%s\",\"reason\":", transport);
  if (reason[0]) printf("\"%s\"", reason); else printf("null");
  printf(",\"group\":\"%s\",\"port\":%d,\"gapUs\":%ld,\"bytes\":%ld,\"samples\":%ld,\"warmup\":%ld,\"lost\":%ld,\"duplicates\":%ld,"
         "\"unit\":\"µs\",\"min\":%.1f,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f,\"mean\":%.1f}\n",
         strcmp(transport, "multicast") == 0 ? group_text : "127.0.0.1", ntohs(dest.sin_port), gap_us, bytes, count, warmup,
         total - received, duplicates, US(xs[0]), AT(0.5), AT(0.9), AT(0.99), AT(0.999), US(xs[count - 1]), US(sum / count));
  return 0;
}
