/* A fake gpuhost-worker for test-worker-protocol: started by gpuhostd in
 * place of the real one ([workers] executable), it misbehaves on its socket
 * (fd 3) in the way $GH_FAKE_WORKER_MODE names, so the test can check that
 * the daemon kills it with a clear reason and carries on. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void send_all(const char *text, size_t len) {
        while (len > 0) {
                ssize_t n = send(3, text, len, MSG_NOSIGNAL);
                if (n < 0 && errno == EAGAIN) {
                        struct pollfd p = {.fd = 3, .events = POLLOUT};
                        poll(&p, 1, 1000);
                        continue;
                }
                if (n <= 0)
                        exit(0);
                text += n;
                len -= (size_t) n;
        }
}

static void send_msg(const char *json) {
        send_all(json, strlen(json) + 1); /* with its NUL */
}

static const char hello[] = "{\"type\":\"hello\",\"version\":1,\"pid\":1,\"pipelines\":[],\"refused\":[],\"rss\":0}";

int main(void) {
        const char *mode = getenv("GH_FAKE_WORKER_MODE");

        if (!mode)
                return 2;
        if (strcmp(mode, "garbage") == 0)
                send_msg("this is not json");
        else if (strcmp(mode, "version") == 0)
                send_msg("{\"type\":\"hello\",\"version\":99,\"pipelines\":[],\"refused\":[]}");
        else if (strcmp(mode, "no-hello") == 0)
                send_msg("{\"type\":\"pong\",\"seq\":1}");
        else if (strcmp(mode, "bad-pipelines") == 0)
                send_msg("{\"type\":\"hello\",\"version\":1,\"pipelines\":[{\"name\":7}],\"refused\":[]}");
        else if (strcmp(mode, "unknown-type") == 0) {
                send_msg(hello);
                send_msg("{\"type\":\"surprise\"}");
        } else if (strcmp(mode, "stray-job") == 0) {
                send_msg(hello);
                send_msg("{\"type\":\"done\",\"job\":\"j-999\",\"outputs\":[]}");
        } else if (strcmp(mode, "not-object") == 0) {
                send_msg(hello);
                send_msg("[1,2,3]");
        } else if (strcmp(mode, "oversize") == 0) {
                static char big[1 << 20];
                memset(big, ' ', sizeof(big));
                send_all("{\"type\":\"hello\",\"pad\":\"", 23);
                for (int i = 0; i < 40; i++) /* 40 MiB without a NUL: past the message limit */
                        send_all(big, sizeof(big));
        } else if (strcmp(mode, "silent") == 0)
                ; /* never says hello: the heartbeat timeout applies */
        else
                return 2;
        for (;;)
                pause();
}
