import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // e2e suites start daemons on fixed tool binaries; keep files isolated but bounded for a 2-core box.
    // Everything a test serves is on loopback (or a *.test name mapped to it): never through an ambient egress proxy.
    env: { NO_PROXY: '127.0.0.1,localhost,.test', no_proxy: '127.0.0.1,localhost,.test' },
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
  },
});
