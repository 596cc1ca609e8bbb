// The word a metadata store and its checkpointer thread share (an Int32Array over a SharedArrayBuffer), so
// that only one of them checkpoints the write-ahead log at a time: the thread takes it for each round, and
// the store takes it when the log has passed its ceiling (MetaStore.boundLog). SQLite's own locks keep
// either checkpoint correct; this word only keeps the store's from being turned away as busy.
export const CKPT_IDLE = 0
export const CKPT_THREAD = 1
export const CKPT_STORE = 2
