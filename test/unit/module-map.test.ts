import { join } from 'node:path';
import { ESLint } from 'eslint';
import { describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..', '..');

async function problems(filePath: string, code: string): Promise<string[]> {
  const [result] = await new ESLint({ cwd: root }).lintText(code, { filePath: join(root, filePath) });
  return (result?.messages ?? []).map((m) => m.message);
}

describe('the module map is enforced by lint', () => {
  it('refuses a route importing policy or upstream, type imports included', async () => {
    expect(await problems('src/server/routes/v2.ts', "import type { Access } from '../../policy/verifier.js';\nexport type A = Access;\n")).toEqual([
      expect.stringContaining('src/server/ may import only cache, config, oci'),
    ]);
    expect(await problems('src/server/routes/v2.ts', "import { drain } from '../../upstream/client.js';\nexport const d = drain;\n")).toHaveLength(1);
    expect(await problems('src/server/routes/v2.ts', "import type { BlobService } from '../../cache/blob-service.js';\nexport type B = BlobService;\n")).toEqual([]);
  });

  it('refuses imports against the direction: oci and config are leaves, folders never import the composition root', async () => {
    expect(await problems('src/oci/digest.ts', "import type { Config } from '../config/load.js';\nexport type C = Config;\n")).toHaveLength(1);
    expect(await problems('src/config/load.ts', "import { CredentialVerifier } from '../policy/verifier.js';\nexport const V = CredentialVerifier;\n")).toHaveLength(1);
    expect(await problems('src/cache/blobs.ts', "import { createServices } from '../services.js';\nexport const S = createServices;\n")).toHaveLength(1);
    expect(await problems('src/store/blob-store.ts', "import type { BlobCache } from '../cache/blobs.js';\nexport type B = BlobCache;\n")).toHaveLength(1);
  });

  it('keeps the SQLite connection inside db/: no other folder imports better-sqlite3', async () => {
    const code = "import type { Database } from 'better-sqlite3';\nexport type D = Database;\n";
    expect(await problems('src/lifecycle/eviction.ts', code)).toEqual([expect.stringContaining('SQL lives in src/db/')]);
    expect(await problems('src/policy/verifier.ts', code)).toHaveLength(1);
    expect(await problems('src/db/content-index.ts', code)).toEqual([]);
  });
});
