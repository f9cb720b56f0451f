// Lint enforces the module map of STYLE.md: imports flow one way,
// server → cache → {policy, limiter, peers, upstream, lifecycle, store, db} → config → oci.
// Type-only imports count too (a type import is still a dependency on the module's design).
import tseslint from 'typescript-eslint';

/** Which project folders each folder may import; anything else under src/ is refused. */
const ALLOWED = {
  // The route handlers ask the cache; only the cache's own token realm (client-auth, routes/token) deals in policy.
  server: ['cache', 'config', 'oci'],
  cache: ['policy', 'limiter', 'peers', 'upstream', 'lifecycle', 'store', 'db', 'config', 'oci'],
  preload: ['policy', 'store', 'db', 'config', 'oci'],
  policy: ['upstream', 'db', 'config', 'oci'],
  peers: ['store', 'config', 'oci'],
  lifecycle: ['store', 'db', 'config', 'oci'],
  limiter: ['config', 'oci'],
  upstream: ['config', 'oci'],
  store: ['config', 'oci'],
  db: ['config', 'oci'],
  config: ['oci'],
  oci: [],
};
const FOLDERS = Object.keys(ALLOWED);

export default tseslint.config(
  { ignores: ['dist/**', 'bench/out/**', 'node_modules/**', 'storage/**'] },
  {
    files: ['**/*.ts'],
    languageOptions: { parser: tseslint.parser },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
  },
  ...FOLDERS.map((folder) => {
    const refused = FOLDERS.filter((f) => f !== folder && !ALLOWED[folder].includes(f));
    // log.ts and metrics.ts are leaves (they import nothing of the project) that every layer may use.
    const rootModules = '(cli|main|app|services|commands|hosts|runtime-check)';
    return {
      files: [`src/${folder}/**/*.ts`],
      rules: {
        'no-restricted-imports': [
          'error',
          {
            // The connection stays private to db/: every statement is a named method of a db/ module.
            ...(folder === 'db' ? {} : { paths: [{ name: 'better-sqlite3', message: 'SQL lives in src/db/ (one module per concern): call a named method there.' }] }),
            patterns: [
              ...(refused.length > 0
                ? [{ regex: `^(\\.\\./)+(${refused.join('|')})/`, message: `src/${folder}/ may import only ${ALLOWED[folder].join(', ') || 'nothing else in the project'} (STYLE.md module map).` }]
                : []),
              // Composition modules at src/ import the folders, never the other way round.
              { regex: `^(\\.\\./)+${rootModules}\\.js$`, message: 'folders never import the composition modules at src/ (cli, main, app, services, …).' },
            ],
          },
        ],
      },
    };
  }),
  {
    // The leaves at src/ that every layer may import must not import the project themselves.
    files: ['src/log.ts', 'src/metrics.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: [{ regex: '^\\./', message: 'log.ts and metrics.ts are leaves: they import nothing of the project.' }] }] },
  },
  {
    // The cache's own Bearer realm: issuing and reading the client tokens is the server's side of the policy.
    files: ['src/server/client-auth.ts', 'src/server/routes/token.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { regex: '^(\\.\\./)+(upstream|limiter|peers|lifecycle|store|db|preload)/', message: 'client authentication may import policy, cache, config and oci only.' },
            { regex: '^(\\.\\./)+(cli|main|app|services|commands|hosts|runtime-check)\\.js$', message: 'folders never import the composition modules at src/.' },
          ],
        },
      ],
    },
  },
);
