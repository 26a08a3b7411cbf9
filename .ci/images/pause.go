// pause: the sandbox ("infra") process of every pod on the test node, built locally so
// containerd never pulls registry.k8s.io/pause. Like Kubernetes' build/pause/linux/pause.c:
// sleep until SIGINT/SIGTERM, reap zombies (it is PID 1 of the pod's PID namespace).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	children := make(chan os.Signal, 1)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-children:
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
