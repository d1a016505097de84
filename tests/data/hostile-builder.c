#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdlib.h>
/* Tries, in turn, what an image's builder would to reach the machine vlab runs on. */
static int leaks;
static void say(const char *what, int rc) {
  if (rc >= 0) { fprintf(stderr, "LEAK %s succeeded\n", what); leaks++; }
  else fprintf(stderr, "denied %s: %s\n", what, strerror(errno));
}
int main(int argc, char **argv) {
  struct { struct file_handle fh; unsigned char b[8]; } h;
  memset(&h, 0, sizeof h);
  h.fh.handle_bytes = 8; h.fh.handle_type = 1; h.b[0] = 2;   /* ext4: inode 2, generation 0 */
  int mfd = open("/tmp", O_RDONLY | O_DIRECTORY);
  say("open_by_handle_at", syscall(SYS_open_by_handle_at, mfd, &h.fh, O_RDONLY | O_DIRECTORY));
  struct { struct file_handle fh; unsigned char b[128]; } n; int mid;
  n.fh.handle_bytes = 128;
  say("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/tmp", &n.fh, &mid, 0));
  pid_t host = argc > 1 ? atoi(argv[1]) : 1;
  say("ptrace", ptrace(PTRACE_ATTACH, host, 0, 0));
  say("ptrace of pid 1", ptrace(PTRACE_ATTACH, 1, 0, 0));
  mkdir("/tmp/m", 0755);
  say("mount", mount("none", "/tmp/m", "tmpfs", 0, 0));
  say("unshare", unshare(CLONE_NEWUSER | CLONE_NEWNS));
  say("write outside scratch", open("/etc/vlab-evil", O_WRONLY | O_CREAT, 0644));
  say("read host file", argc > 2 ? open(argv[2], O_RDONLY) : -1);
  say("chroot", chroot("/tmp"));
  fflush(stdout);
  if (leaks) return 0;
  fprintf(stderr, "hostile builder: every attempt denied\n");
  return 1;
}
