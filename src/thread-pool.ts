// Imported first by the CLI, before anything uses libuv's thread pool (its size is read once, at first use).
// Every committed blob is fsynced there (10-300 ms each on a busy disk, measured with strace: 153 fsyncs for a cold
// 40-layer pull), and so is every file open, read and write of the store: with the default 4 threads, a few commits
// in flight delay the next blob's temp file and every stored read behind them. An operator's own setting wins.
process.env.UV_THREADPOOL_SIZE ??= '16';
export {};
