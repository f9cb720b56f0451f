import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../../src/config/load.js';

describe('pull limits in the configuration', () => {
  it('serializeImagePulls: false without maxParallelImagePulls means no limit (the kubelet rule)', () => {
    expect(loadConfig({ env: {}, overrides: { serializeImagePulls: false } }).maxParallelImagePulls).toBeUndefined();
  });
});
