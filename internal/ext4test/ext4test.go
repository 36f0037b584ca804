// Package ext4test mounts a small ext4 filesystem on a loop device for tests
// that need real I/O errors: after Shutdown every read, write and fsync on
// it fails with EIO, as on a disk that went away. It needs root and the
// mount command; Mount skips the test otherwise.
package ext4test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// FS is a mounted test filesystem.
type FS struct {
	Dir string // the mount point
	t   testing.TB
}

// Mount creates a 64 MiB ext4 image in a temp dir and mounts it; the
// cleanup unmounts it (and fails the test if that is refused: a descriptor
// left open keeps the filesystem busy).
func Mount(t testing.TB) *FS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a loop filesystem")
	}
	for _, tool := range []string{"mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	base := t.TempDir()
	img, mnt := filepath.Join(base, "fs.img"), filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a loop filesystem here: %v: %s", err, strings.TrimSpace(string(out)))
	}
	fs := &FS{Dir: mnt, t: t}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s (a descriptor on it is still open)", mnt, err, strings.TrimSpace(string(out)))
			_ = exec.Command("umount", "-l", mnt).Run()
		}
	})
	return fs
}

// Shutdown makes the filesystem fail every operation with EIO from now on
// (ext4's EXT4_IOC_SHUTDOWN with EXT4_GOING_FLAGS_NOLOGFLUSH).
func (fs *FS) Shutdown() {
	fs.t.Helper()
	f, err := os.Open(fs.Dir)
	if err != nil {
		fs.t.Fatal(err)
	}
	defer f.Close()
	const ext4IocShutdown = 0x8004587D // _IOR('X', 125, __u32)
	flag := uint32(2)                  // EXT4_GOING_FLAGS_NOLOGFLUSH
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), ext4IocShutdown, uintptr(unsafe.Pointer(&flag))); errno != 0 {
		fs.t.Fatalf("ext4 shutdown ioctl: %v", errno)
	}
}

// OpenDescriptors counts the process's open file descriptors.
func OpenDescriptors(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(ents)
}

// DescriptorsUnder lists the process's descriptors open on files under dir.
func DescriptorsUnder(t testing.TB, dir string) []string {
	t.Helper()
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && strings.HasPrefix(target, dir) {
			out = append(out, target)
		}
	}
	return out
}
