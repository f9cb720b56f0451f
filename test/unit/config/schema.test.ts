import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { TSchema } from '@sinclair/typebox';
import { describe, expect, it } from 'vitest';
import { ConfigSchema, DEFAULT_REGISTRIES, RegistrySchema } from '../../../src/config/schema.js';

const README = readFileSync(join(resolve(import.meta.dirname, '../../..'), 'README.md'), 'utf8');

/** The rows of README's configuration table: the keys of a row and what its default column says. */
function configurationRows(): { keys: string[]; defaults: string }[] {
  const lines = README.slice(README.indexOf('| key | default |')).split('\n').slice(2);
  const table = lines.slice(0, lines.findIndex((line) => !line.startsWith('|')));
  return table
    .map((line) => {
      const [keyCell = '', defaults = ''] = line.split(' | ');
      const names = [...keyCell.matchAll(/`([^`]+)`/g)].map((m) => m[1] as string);
      // `registries.<host>.clientCert` / `clientKey`: later names share the first one's prefix.
      const prefix = names[0]?.startsWith('registries.<host>.') ? 'registries.<host>.' : '';
      return { keys: names.map((n, i) => (i > 0 && !n.includes('.') ? prefix + n : n)), defaults: defaults.trim() };
    });
}

function schemaFor(key: string): TSchema | undefined {
  const registryKey = /^registries\.<host>\.(.+)$/.exec(key)?.[1];
  const properties: Record<string, TSchema> = registryKey === undefined ? ConfigSchema.properties : RegistrySchema.properties;
  return properties[registryKey ?? key];
}

describe('the configuration schema', () => {
  it('holds every default README documents, and no default README does not', () => {
    const rows = configurationRows();
    expect(rows.length).toBeGreaterThan(30);
    for (const { keys, defaults } of rows) {
      const schemas = keys.map((k) => schemaFor(k));
      schemas.forEach((s, i) => expect(s, `README documents ${keys[i]}`).toBeDefined());
      const given = schemas.map((s) => (s?.default === undefined ? undefined : typeof s.default === 'string' ? s.default : JSON.stringify(s.default)));
      if (keys[0] === 'registries') {
        expect(defaults).toBe(Object.keys(DEFAULT_REGISTRIES).join(', '));
      } else if (/^(none|unset|the global `upstream\*Timeout` values)\b/.test(defaults)) {
        // No default, or one taken from another key when the config is resolved.
        expect(given, keys.join(', ')).toEqual(keys.map(() => undefined));
      } else {
        const documented = defaults.split(/ (?:when|\()/)[0]?.split(' / ').map((d) => /^`([^`]*)`$/.exec(d.trim())?.[1]);
        expect(given, keys.join(', ')).toEqual(documented);
      }
    }
  });
});
