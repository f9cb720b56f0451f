// Lint enforces the module map of STYLE.md: imports flow one way,
// server → cache → {policy, limiter, peers, upstream, lifecycle, store, db} → config → oci.
// Type-only imports count too (a type import is still a dependency on the module's design).
import tseslint from 'typescript-eslint';

/** Which project folders each folder may import; anything else under src/ is refused. */
const ALLOWED = {
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
    const rootModules = '(cli|main|app|services|commands|hosts|log|metrics|runtime-check)';
    return {
      files: [`src/${folder}/**/*.ts`],
      rules: {
        'no-restricted-imports': [
          'error',
          {
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
);
