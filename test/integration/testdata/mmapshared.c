/* mmapshared FILE TEXT: writes TEXT into FILE through a shared writable mapping (what
 * SQLite's WAL index, LMDB and other databases do), then exits without msync or munmap. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc != 3) {
		fprintf(stderr, "usage: mmapshared FILE TEXT\n");
		return 64;
	}
	int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || ftruncate(fd, 4096) != 0) {
		perror(argv[1]);
		return 1;
	}
	char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap MAP_SHARED PROT_WRITE");
		return 2;
	}
	memcpy(p, argv[2], strlen(argv[2]));
	return 0;
}
