# The virtual board's flash for MicroPython's vfs.VfsLfs2: a block device over the region of the
# flash image file where the firmware mounts its filesystem (as ports/esp32/modules/flashbdev.py
# is over the `vfs` partition). Every program and erase goes to the file at once, in littlefs's
# order, so a killed process leaves what a power cut would (whole programs, littlefs's model).


class FileFlash:
    def __init__(self, path, offset, block_size, block_count):
        self.f = open(path, "r+b")
        self.offset = offset
        self.bs = block_size
        self.count = block_count
        self._blank = b"\xff" * block_size  # one erased block, made once (an erase allocates nothing)

    def readblocks(self, n, buf, off=0):
        self.f.seek(self.offset + n * self.bs + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=None):
        if off is None:  # the simple interface: erase, then program the whole block
            self.ioctl(6, n)
            off = 0
        self.f.seek(self.offset + n * self.bs + off)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.count
        if op == 5:  # block size
            return self.bs
        if op == 6:  # erase
            self.f.seek(self.offset + arg * self.bs)
            self.f.write(self._blank)
            return 0
        return 0  # init, deinit, sync: nothing to do, every write is in the file already
