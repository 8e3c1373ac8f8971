/* The pod sandbox's pause process for the local node (built with gcc -static).
 * Sleeps until SIGINT or SIGTERM (then exits 0) and reaps every child it inherits. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_down(int sig) {
  (void)sig;
  _exit(0);
}

static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction down = {0}, child = {0};
  if (getpid() != 1) {
    /* Like upstream pause: harmless elsewhere, but say so. */
    static const char msg[] = "pause: warning: not running as PID 1\n";
    (void)!write(2, msg, sizeof msg - 1);
  }
  down.sa_handler = on_down;
  sigemptyset(&down.sa_mask);
  sigaction(SIGINT, &down, NULL);
  sigaction(SIGTERM, &down, NULL);
  child.sa_handler = on_child;
  child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  sigemptyset(&child.sa_mask);
  sigaction(SIGCHLD, &child, NULL);
  for (;;) pause();
  return 0;
}
