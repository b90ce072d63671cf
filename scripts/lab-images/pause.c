/*
 * The pod sandbox process of the lab's Kubernetes nodes (localhost/pause:lab,
 * built by scripts/lab-images.sh): it holds the pod's namespaces open and
 * does nothing else. As the usual pause image does, it exits 0 on SIGINT or
 * SIGTERM, reaps whatever children it inherits (it is PID 1 of a pod that
 * shares its process namespace), and otherwise sleeps in pause() forever.
 *
 * Built static (gcc -static) so the image needs no other file.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig)
{
	(void)sig;
	_exit(0);
}

static void reap(int sig)
{
	int saved = errno;

	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	errno = saved;
}

static void on(int sig, void (*handler)(int), int flags)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL) != 0) {
		perror("pause: sigaction");
		_exit(1);
	}
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("pause (ocfs2-csi lab)");
		return 0;
	}
	if (getpid() != 1)
		fputs("pause: warning: not PID 1\n", stderr);

	on(SIGINT, stop, 0);
	on(SIGTERM, stop, 0);
	on(SIGCHLD, reap, SA_NOCLDSTOP | SA_RESTART);

	for (;;)
		pause();
	return 42; /* not reached */
}
