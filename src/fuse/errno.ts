// Linux errno values, and the errno of an error on its way to the kernel.
export const ERRNO: Record<string, number> = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  EMLINK: 31,
  ERANGE: 34,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENODATA: 61,
  E2BIG: 7,
  EOPNOTSUPP: 95,
  ETIMEDOUT: 110
}

export function errnoOf (err: unknown): number {
  const code = (err as { code?: string } | null)?.code
  return -(code !== undefined && ERRNO[code] !== undefined ? ERRNO[code] : ERRNO.EIO)
}
