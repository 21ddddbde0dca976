"""Installing a bundle: the update half of pinagent.store, in a module of its own so a board holds
its code only while it installs (pinagent.UPDATE_PATH). The steps, their order and what a power
cut at each leaves are pinagent.store's module docstring.

    install(store, data)   verifies and installs a bundle atomically; returns store.Verified.
                           Refusals from the store's verify propagate unchanged; the store's own
                           refusals and storage failures raise Rollback / TooLarge / NoSpace /
                           StorageFailed / NoTrustAnchor, and leave the installed bundle as it was.
"""

import hashlib

from . import store as S

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_CHUNK = const(512)  # read-back chunk


def install(store, data):
    st = store.state
    if st is None:
        st = store.boot()
    if st.signers is None:
        raise S.NoTrustAnchor("no trusted signer set on the board")
    v = store.verify(data, st.signers, st.version if st.version is not None else 0)
    reset = S.retires(st.max_keys, v.new_keys)  # store docstring, "A stolen key"
    if v.below is not None and not reset:  # at or below the installed version: not a reset
        raise v.below
    if v.version < st.max_version and not reset:  # older than a bundle installed before
        raise S.Rollback("version %d, but %d was installed before" % (v.version, st.max_version))
    S.check_slot_sizes(st.signers, data)
    try:
        _commit(store, st, data, reset and v.version <= st.max_version)
    except Exception as e:
        st.failed_updates += 1
        if isinstance(e, S.StoreError):
            raise
        if isinstance(e, OSError) and S.errno_of(e) == S.ENOSPC:
            raise S.NoSpace("flash full while writing the bundle")
        raise S.StorageFailed(S.why(e))
    store.take(st, S.BUNDLE, data, v)
    st.mode = S.MODE_OK
    st.updates += 1
    store.save_state(st)
    return v


def _commit(store, st, data, below):
    # below: a reset to a version at or below the record's. The slots that hold newer versions
    # (those the retired key vouched for) go: bundle.bin is replaced, not kept as bundle.prev,
    # and bundle.prev is removed first, so no damaged file or power cut brings them back.
    fs = store.fs
    path = store.path
    fs.ensure_dir(store.root)
    if st.source == S.BUNDLE_NEW:  # boot could not finish the previous commit: finish it first
        fs.rename(path(S.BUNDLE_NEW), path(S.BUNDLE))
        st.source = S.BUNDLE
    signers = st.signers
    new = path(S.BUNDLE_NEW)
    fs.remove_quiet(new)
    size = S.SLOT_OVERHEAD + len(signers) + len(data)
    _make_room(store, st, size)
    digest = S.slot_digest(signers, data)
    try:
        f = fs.open(new, "wb")
        try:
            for part in (S.slot_head(signers, data), signers, data, digest):
                S.write_all(f, part)
        finally:
            f.close()
        if not _written_ok(fs, new, size, digest):
            raise S.StorageFailed("read-back of %s differs from what was written" % S.BUNDLE_NEW)
    except Exception:
        _remove_new(store)
        raise
    moved = False
    try:
        if below:
            fs.remove_quiet(path(S.BUNDLE_PREV))
        elif st.source == S.BUNDLE:
            fs.rename(path(S.BUNDLE), path(S.BUNDLE_PREV))
            moved = True
        fs.rename(new, path(S.BUNDLE))  # the commit point
    except Exception:
        _undo(store, st, moved)
        raise


def _undo(store, st, moved):
    # The commit rename failed. Put the old bundle back; if even that fails, leave bundle.new
    # (boot installs it, since bundle.bin is gone) and remember the old one is in bundle.prev.
    try:
        if moved:
            store.fs.rename(store.path(S.BUNDLE_PREV), store.path(S.BUNDLE))
        _remove_new(store)
    except Exception:
        st.source = S.BUNDLE_PREV


def _remove_new(store):
    try:
        store.fs.remove_quiet(store.path(S.BUNDLE_NEW))
    except Exception:  # boot removes a stale temp anyway
        pass


def _make_room(store, st, size):
    fs = store.fs
    free, block = fs.free(store.root)
    need = ((size + block - 1) // block + 1) * block  # the file, plus a block of metadata slack
    if free >= need:
        return
    # the decoded form of the bundle being replaced, a staged upload and bundle.prev are only
    # spares: drop them, in that order, unless prev is in use
    spares = (S.INDEX, S.UPLOAD, S.BUNDLE_PREV) if st.source != S.BUNDLE_PREV else (S.INDEX, S.UPLOAD)
    for name in spares:
        if free < need and fs.size(store.path(name)) >= 0:
            fs.remove_quiet(store.path(name))
            free, block = fs.free(store.root)
    if free < need:
        raise S.NoSpace("%d bytes free, %d needed" % (free, need))


def _written_ok(fs, path, size, digest):
    """Reads a slot file back in small chunks (no second copy of the bundle on the heap):
    True if it has `size` bytes, hashes to `digest` and ends with it."""
    if fs.size(path) != size:
        return False
    body = size - S.DIGEST_LEN
    h = hashlib.sha256()
    tail = b""
    f = fs.open(path, "rb")
    try:
        done = 0
        while done < size:
            chunk = f.read(min(_CHUNK, size - done))
            if not chunk:
                return False
            if done < body:
                h.update(chunk[: body - done])
            if done + len(chunk) > body:
                tail += chunk[max(0, body - done):]
            done += len(chunk)
    finally:
        f.close()
    return tail == digest and h.digest() == digest
