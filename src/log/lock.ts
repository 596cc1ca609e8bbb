// A FIFO async mutex: packer rounds, checkpoints and the cleaner take turns on the logical disk.
export class Lock {
  private tail: Promise<void> = Promise.resolve()

  run<T> (fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn)
    this.tail = result.then(() => {}, () => {})
    return result
  }
}
